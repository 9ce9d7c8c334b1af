package cli

// commands lists the subcommands. One field per subcommand; each type lives
// in its own file and has a Run(*Globals) error method.
type commands struct {
	Version versionCmd `cmd:"" help:"Print Warren's version."`
}
