package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/warrenrpc/warren/mapper"
)

// printProgress writes one progress message of warren request --progress
// as a line: the agent, the key, and the value, drawn as a bar when it is
// a fraction (0.25) or a count ({"done": 3, "total": 12}):
//
//	progress fred files: [###.........] 3/12
//	progress fred: [######......] 50%
//	progress fred step: "reading"
func printProgress(w io.Writer, p mapper.Progress) {
	var b strings.Builder
	b.WriteString("progress ")
	b.WriteString(escape(p.Agent))
	if p.Key != "" {
		b.WriteString(" " + escape(p.Key))
	}
	b.WriteString(": ")
	var f float64
	var count struct {
		Done  *float64 `json:"done"`
		Total *float64 `json:"total"`
	}
	switch {
	case json.Unmarshal(p.Value, &f) == nil && f >= 0 && f <= 1 && bytes.ContainsRune(p.Value, '.'):
		// A fraction; an integer is a value, not 0% or 100%.
		fmt.Fprintf(&b, "%s %.0f%%", bar(f), 100*f)
	case json.Unmarshal(p.Value, &count) == nil && count.Done != nil && count.Total != nil && *count.Total > 0 && *count.Done >= 0 && *count.Done <= *count.Total:
		fmt.Fprintf(&b, "%s %g/%g", bar(*count.Done / *count.Total), *count.Done, *count.Total)
	default:
		var compact bytes.Buffer
		if json.Compact(&compact, p.Value) != nil {
			compact.Reset()
			compact.WriteString(fmt.Sprintf("%q", p.Value))
		}
		b.Write(escapeJSON(compact.Bytes()))
	}
	fmt.Fprintln(w, b.String())
}

// bar draws a fraction in 20 cells.
func bar(f float64) string {
	n := int(f*20 + 0.5)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", 20-n) + "]"
}
