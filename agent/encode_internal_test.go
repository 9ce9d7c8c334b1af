package agent

import (
	"bytes"
	"encoding/json"
	"testing"
)

// encodeResult gives what json.Marshal gives, for raw results it passes on
// as they are and for those it does not.
func TestEncodeResultAsMarshal(t *testing.T) {
	for _, r := range []any{
		json.RawMessage(`"hello"`),
		json.RawMessage(`{"a":[1,2,{"b":null}]}`),
		json.RawMessage(` {"a" : 1}`),
		json.RawMessage("[1,\n2]"),
		json.RawMessage(`"<b>&"`),
		json.RawMessage("\"\u2028\u2029\""),
		json.RawMessage(`"\u00e9"`),
		json.RawMessage(nil),
		json.RawMessage(`{"a":`),
		json.RawMessage(`nul`),
		map[string]int{"a": 1},
		"text",
		nil,
	} {
		want, werr := json.Marshal(r)
		got, gerr := encodeResult(r)
		if (werr == nil) != (gerr == nil) || !bytes.Equal(got, want) {
			t.Errorf("encodeResult(%#v) = %q, %v; json.Marshal: %q, %v", r, got, gerr, want, werr)
		}
	}
}

// A compact raw result is sent without a copy.
func TestEncodeResultRawNoAlloc(t *testing.T) {
	var r any = json.RawMessage(`{"a":"hello"}`)
	if n := testing.AllocsPerRun(100, func() { _, _ = encodeResult(r) }); n != 0 {
		t.Errorf("encodeResult of a compact raw message: %v allocations, want 0", n)
	}
}
