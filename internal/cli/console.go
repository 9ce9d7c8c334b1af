package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/warrenrpc/warren/mapper"
	"github.com/warrenrpc/warren/wire"
	"golang.org/x/term"
)

type consoleCmd struct {
	brokerFlags
	Timeout time.Duration `name:"timeout" default:"10s" help:"Default timeout of each request and push (--timeout on a line overrides it)."`
	History string        `name:"history" placeholder:"FILE" help:"Keep the line history in this file (default ~/.warren_history; \"\" keeps none)." default:"~/.warren_history"`
}

func (c *consoleCmd) Help() string {
	return `Nanite's interactive mapper console: a mapper of its own, and a prompt to
drive the fabric by hand. Line editing, history (up and down arrows, kept in
--history) and tab completion of commands, live service paths, selectors and
agent identities.

  warren> agents
  warren> request /simple/echo "hi" --selector all
  warren> push /simple/sleep 1 --to fred
  warren> watch

Type help at the prompt for every command. Results are printed as indented
JSON; remote text is escaped. Without a terminal it reads commands from stdin.`
}

func (c *consoleCmd) Run(g *Globals) error {
	if err := checkDuration("--timeout", c.Timeout, true); err != nil {
		return err
	}
	ctx := g.Context()
	tr, id, err := c.dialAs(ctx, g, "console")
	if err != nil {
		return err
	}
	defer tr.Close()
	con := &console{timeout: c.Timeout}
	m, err := mapper.New(tr, mapper.Config{Identity: id}, mapper.WithLogger(g.Logger()), mapper.WithEvents(con.event))
	if err != nil {
		return err
	}
	mctx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- m.Run(mctx) }()
	select {
	case <-m.Ready():
	case err := <-runErr:
		return err
	}
	con.m = m
	var replErr error
	if f, ok := g.Out().(*os.File); ok && f == os.Stdout && term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(f.Fd())) {
		replErr = con.interactive(ctx, c.History)
	} else {
		replErr = con.run(ctx, os.Stdin, g.Out(), nil)
	}
	stop()
	if err := <-runErr; replErr == nil {
		replErr = err
	}
	return replErr
}

// interactive runs the console on the terminal, in raw mode.
func (con *console) interactive(ctx context.Context, historyFile string) error {
	old, err := term.MakeRaw(int(os.Stdin.Fd()))
	if err != nil {
		return err
	}
	defer term.Restore(int(os.Stdin.Fd()), old)
	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{os.Stdin, os.Stdout}, "warren> ")
	if w, h, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
		_ = t.SetSize(w, h)
	}
	con.historyFile = expandHome(historyFile)
	return con.run(ctx, nil, t, t)
}

// console is the REPL: it reads commands from a terminal (line editing,
// history, completion) or from a plain reader.
type console struct {
	m       *mapper.Mapper
	timeout time.Duration

	historyFile string // "" keeps no history file

	mu       sync.Mutex
	out      io.Writer // where events are printed while watching
	watching bool
}

// event prints registry changes while watch is on.
func (con *console) event(e mapper.Event) {
	con.mu.Lock()
	defer con.mu.Unlock()
	if con.watching && con.out != nil {
		fmt.Fprintf(con.out, "%s agent %s %s\n", time.Now().Format("15:04:05"), escape(e.Agent.Identity), e.Kind)
	}
}

// run reads commands until EOF, quit or ctx ends. With t it reads from
// the terminal (which is also out); else from in.
func (con *console) run(ctx context.Context, in io.Reader, out io.Writer, t *term.Terminal) error {
	con.mu.Lock()
	con.out = out
	con.mu.Unlock()
	var next func() (string, error)
	if t != nil {
		t.History = loadHistory(con.historyFile)
		t.AutoCompleteCallback = func(line string, pos int, key rune) (string, int, bool) {
			if key != '\t' {
				return "", 0, false
			}
			return con.complete(out, line, pos)
		}
		fmt.Fprintln(out, "Warren console: help lists the commands, quit or Ctrl-D leaves.")
		next = t.ReadLine
	} else {
		sc := bufio.NewScanner(in)
		sc.Buffer(nil, 1<<20)
		next = func() (string, error) {
			if sc.Scan() {
				return sc.Text(), nil
			}
			if sc.Err() != nil {
				return "", sc.Err()
			}
			return "", io.EOF
		}
	}
	lines := make(chan string)
	errc := make(chan error, 1)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			l, err := next()
			if err != nil {
				errc <- err
				return
			}
			select {
			case lines <- l:
			case <-done:
				return
			}
		}
	}()
	for {
		var line string
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case line = <-lines:
		}
		quit, err := con.exec(ctx, out, line)
		if err != nil {
			fmt.Fprintf(out, "error: %s\n", escapeLines(err.Error()))
		}
		if quit {
			return nil
		}
	}
}

// consoleCommands are the commands, for help and completion.
var consoleCommands = []struct{ name, args, help string }{
	{"agents", "[--tag T]", "list the live agents: identity, services, status, tags, last heartbeat"},
	{"services", "", "list the service paths and the agents that serve them"},
	{"request", "PATH [JSON] [--selector S] [--to ID] [--tag T] [--timeout D]", "send a request and print the result (--selector all: every agent's)"},
	{"push", "PATH [JSON] [--selector S] [--to ID] [--tag T] [--timeout D]", "send a push (no result)"},
	{"watch", "[on|off]", "print joins and drops as they happen"},
	{"help", "", "this list"},
	{"quit", "", "leave (also exit, Ctrl-D)"},
}

var consoleSelectors = []string{"least_loaded", "all", "random", "round_robin"}

// exec runs one command line.
func (con *console) exec(ctx context.Context, out io.Writer, line string) (quit bool, err error) {
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return false, nil
	}
	switch cmd, args := fields[0], fields[1:]; cmd {
	case "quit", "exit":
		return true, nil
	case "help", "?":
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		for _, c := range consoleCommands {
			fmt.Fprintf(tw, "%s %s\t%s\n", c.name, c.args, c.help)
		}
		return false, tw.Flush()
	case "agents":
		opts, rest, err := parseCallOptions(args)
		if err != nil {
			return false, err
		}
		if len(rest) > 0 || opts.selector != "" || opts.to != "" || opts.timeout != 0 {
			return false, errors.New("usage: agents [--tag T]")
		}
		as := con.m.Agents()
		as = slices.DeleteFunc(as, func(a mapper.AgentInfo) bool { return !a.HasTags(opts.tags...) })
		return false, printAgents(out, as, false)
	case "services":
		if len(args) > 0 {
			return false, errors.New("usage: services")
		}
		by := map[string][]string{}
		for _, a := range con.m.Agents() {
			for _, p := range a.Services {
				by[p] = append(by[p], a.Identity)
			}
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PATH\tAGENTS")
		for _, p := range slices.Sorted(mapKeys(by)) {
			ids := make([]string, len(by[p]))
			for i, id := range by[p] {
				ids[i] = escape(id)
			}
			fmt.Fprintf(tw, "%s\t%s\n", escape(p), strings.Join(ids, " "))
		}
		return false, tw.Flush()
	case "watch":
		on := true
		if len(args) == 1 && args[0] == "off" {
			on = false
		} else if len(args) > 1 || len(args) == 1 && args[0] != "on" {
			return false, errors.New("usage: watch [on|off]")
		}
		con.mu.Lock()
		con.watching = on
		con.mu.Unlock()
		if on {
			fmt.Fprintln(out, "watching joins and drops (watch off to stop)")
		}
		return false, nil
	case "request", "push":
		return false, con.call(ctx, out, cmd, args)
	}
	return false, fmt.Errorf("unknown command %q: help lists them", escape(fields[0]))
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

type consoleCall struct {
	selector, to string
	tags         []string
	timeout      time.Duration
}

// parseCallOptions takes the --options out of args; what is left is the
// path and the payload.
func parseCallOptions(args []string) (consoleCall, []string, error) {
	var c consoleCall
	var rest []string
	for i := 0; i < len(args); i++ {
		name, value, hasValue := strings.Cut(args[i], "=")
		switch name {
		case "--selector", "-s", "--to", "--tag", "--timeout":
		default:
			rest = append(rest, args[i])
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				return c, nil, fmt.Errorf("%s needs a value", name)
			}
			i++
			value = args[i]
		}
		switch name {
		case "--selector", "-s":
			c.selector = value
		case "--to":
			c.to = value
		case "--tag":
			c.tags = append(c.tags, value)
		case "--timeout":
			d, err := time.ParseDuration(value)
			if err != nil || d <= 0 {
				return c, nil, fmt.Errorf("--timeout %q: want a positive duration", value)
			}
			c.timeout = d
		}
	}
	return c, rest, nil
}

// call sends a request or push.
func (con *console) call(ctx context.Context, out io.Writer, kind string, args []string) error {
	c, rest, err := parseCallOptions(args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return fmt.Errorf("usage: %s PATH [JSON] [--selector S] [--to ID] [--tag T] [--timeout D]", kind)
	}
	path := rest[0]
	if err := wire.CheckPath(path); err != nil {
		return err
	}
	payload := strings.Join(rest[1:], " ")
	if payload == "" {
		payload = "null"
	}
	if !json.Valid([]byte(payload)) {
		return fmt.Errorf("payload %q is not JSON (quote strings: \"hi\")", payload)
	}
	sel := mapper.LeastLoaded()
	if c.selector != "" {
		if sel, err = mapper.ParseSelector(c.selector); err != nil {
			return err
		}
	}
	if c.to != "" {
		if c.selector != "" {
			return errors.New("--to names one agent: give it or --selector, not both")
		}
		sel = mapper.Identity(c.to)
	}
	opts := []mapper.CallOption{mapper.Select(sel), mapper.WithTags(c.tags...)}
	timeout := con.timeout
	if c.timeout > 0 {
		timeout = c.timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body := json.RawMessage(payload)
	start := time.Now()
	switch {
	case kind == "push":
		if err := con.m.Push(ctx, path, body, opts...); err != nil {
			return err
		}
		fmt.Fprintf(out, "pushed (%v)\n", time.Since(start).Round(time.Microsecond))
		return nil
	case c.selector == "all":
		rs, err := con.m.FanOut(ctx, path, body, opts...)
		if err != nil {
			return err
		}
		res := map[string]any{}
		for id, r := range rs {
			res[id] = replyJSON(r)
		}
		if err := printJSON(out, res); err != nil {
			return err
		}
	default:
		r, err := con.m.Request(ctx, path, body, opts...)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "from %s:\n", escape(r.Agent))
		if err := printJSON(out, r.Body); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "(%v)\n", time.Since(start).Round(time.Microsecond))
	return nil
}

// complete completes the word before pos: a command, a live service path,
// a selector or an agent identity. With several candidates it completes
// their common prefix and lists them.
func (con *console) complete(out io.Writer, line string, pos int) (string, int, bool) {
	head := line[:pos]
	start := strings.LastIndexByte(head, ' ') + 1
	word := head[start:]
	before := strings.Fields(head[:start])
	var cands []string
	switch {
	case len(before) == 0:
		for _, c := range consoleCommands {
			cands = append(cands, c.name)
		}
	case before[len(before)-1] == "--selector" || before[len(before)-1] == "-s":
		cands = consoleSelectors
	case before[len(before)-1] == "--to":
		for _, a := range con.m.Agents() {
			cands = append(cands, a.Identity)
		}
	case strings.HasPrefix(word, "--") && (before[0] == "request" || before[0] == "push"):
		cands = []string{"--selector", "--to", "--tag", "--timeout"}
	case len(before) == 1 && (before[0] == "request" || before[0] == "push"):
		seen := map[string]bool{}
		for _, a := range con.m.Agents() {
			for _, p := range a.Services {
				if !seen[p] {
					seen[p] = true
					cands = append(cands, p)
				}
			}
		}
	case len(before) == 1 && before[0] == "watch":
		cands = []string{"on", "off"}
	}
	var match []string
	for _, c := range cands {
		if strings.HasPrefix(c, word) {
			match = append(match, c)
		}
	}
	slices.Sort(match)
	switch len(match) {
	case 0:
		return "", 0, false
	case 1:
		completed := head[:start] + match[0] + " "
		return completed + line[pos:], len(completed), true
	}
	prefix := match[0]
	for _, m := range match[1:] {
		for !strings.HasPrefix(m, prefix) {
			prefix = prefix[:len(prefix)-1]
		}
	}
	if len(prefix) > len(word) {
		completed := head[:start] + prefix
		return completed + line[pos:], len(completed), true
	}
	shown := make([]string, len(match))
	for i, m := range match {
		shown[i] = escape(m)
	}
	fmt.Fprintln(out, strings.Join(shown, "  "))
	return "", 0, false
}

// history is the console's line history, kept in a file.
type history struct {
	file  string
	lines []string // oldest first
}

const maxHistory = 1000

func loadHistory(file string) *history {
	h := &history{file: file}
	if file == "" {
		return h
	}
	if b, err := os.ReadFile(file); err == nil {
		for l := range strings.Lines(string(b)) {
			if l = strings.TrimRight(l, "\r\n"); l != "" {
				h.lines = append(h.lines, l)
			}
		}
		if len(h.lines) > maxHistory {
			h.lines = h.lines[len(h.lines)-maxHistory:]
		}
	}
	return h
}

// Add records a line and appends it to the file (errors are ignored: a
// history that cannot be kept is no reason to stop).
func (h *history) Add(line string) {
	if line == "" || len(h.lines) > 0 && h.lines[len(h.lines)-1] == line {
		return
	}
	h.lines = append(h.lines, line)
	if len(h.lines) > maxHistory {
		h.lines = h.lines[1:]
	}
	if h.file == "" {
		return
	}
	if f, err := os.OpenFile(h.file, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600); err == nil {
		fmt.Fprintln(f, line)
		f.Close()
	}
}

// Len and At: At(0) is the latest line.
func (h *history) Len() int          { return len(h.lines) }
func (h *history) At(idx int) string { return h.lines[len(h.lines)-1-idx] }

func expandHome(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
		return ""
	}
	return p
}
