package tlsflags

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// CheckFile checks that value, given to a flag that takes a file (flag,
// or the environment variable env when not ""), names an existing file.
// Its errors name the flag and never show value: a value that names no
// file may be the secret itself, pasted where its path belongs (a PEM key,
// a password), and command output ends up in terminals, logs and CI
// transcripts. (kong's type:"existingfile" quotes the value.)
func CheckFile(flag, env, value string) error {
	name := flag
	if env != "" {
		name += " (or " + env + ")"
	}
	if LooksLikeSecret(value) {
		return fmt.Errorf("%s takes the path of a file, not its contents (the value given is not shown)", name)
	}
	st, err := os.Stat(value)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("%s: %v (the name is not shown, in case it is a key or password given instead of a path)", name, err)
	}
	if st.IsDir() {
		return fmt.Errorf("%s: a directory, not a file", name)
	}
	return nil
}

// LooksLikeSecret reports whether value is file contents rather than a
// path: a PEM block, or several lines.
func LooksLikeSecret(value string) bool {
	return strings.Contains(value, "-----BEGIN") || strings.Contains(value, "PRIVATE KEY") || strings.ContainsAny(value, "\n\r")
}
