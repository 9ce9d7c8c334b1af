package bert

// Atom is an Erlang atom. Decoding produces an Atom for ATOM_EXT (100),
// SMALL_ATOM_EXT (115), ATOM_UTF8_EXT (118) and SMALL_ATOM_UTF8_EXT (119);
// encoding writes ATOM_EXT.
type Atom string

// Tuple is an Erlang tuple (SMALL_TUPLE_EXT 104 or LARGE_TUPLE_EXT 105).
type Tuple []any

// List is a proper Erlang list (NIL_EXT 106 or LIST_EXT 108). Decoding the
// empty list gives an empty, non-nil List.
type List []any

// Charlist is an Erlang "string": a list of bytes sent as STRING_EXT (107).
type Charlist string

// KV is one key/value pair of a [Dict] or a [Map].
type KV struct {
	Key, Value any
}

// Dict is the BERT complex type {bert, dict, [{Key, Value}, ...]}. Order is
// preserved as on the wire.
type Dict []KV

// Map is an Erlang map (MAP_EXT 116). Maps are not part of BERT: they are
// decoded (pairs in wire order) but refused by [Marshal].
type Map []KV

// Regex is the BERT complex type {bert, regex, Source, Options}. Options
// holds the option atoms (and tuples) as sent, for example Atom("caseless").
type Regex struct {
	Source  string
	Options []any
}
