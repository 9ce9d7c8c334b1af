// Package bert encodes and decodes BERT (Binary ERlang Term), the
// serialization of BERT-RPC and Ernie, and reads and writes BERP framing.
//
// BERT is Erlang's external term format (what term_to_binary writes)
// restricted to a few tags, plus "complex types": tuples whose first
// element is the atom bert, for the values Erlang has no type for.
//
// # Mapping
//
// [Unmarshal] produces exactly these Go types:
//
//	Erlang term (tag)                               Go value
//	----------------------------------------------  ----------------------------------------
//	SMALL_INTEGER_EXT 97, INTEGER_EXT 98            int
//	SMALL_BIG_EXT 110, LARGE_BIG_EXT 111            int if it fits, else *big.Int
//	FLOAT_EXT 99, NEW_FLOAT_EXT 70                  float64
//	ATOM_EXT 100, SMALL_ATOM_EXT 115,               Atom
//	  ATOM_UTF8_EXT 118, SMALL_ATOM_UTF8_EXT 119
//	SMALL_TUPLE_EXT 104, LARGE_TUPLE_EXT 105        Tuple
//	NIL_EXT 106 ([])                                List{} (empty, not nil)
//	LIST_EXT 108 (proper lists only)                List
//	STRING_EXT 107 (bytelist, "abc")                Charlist
//	BINARY_EXT 109                                  []byte (a copy)
//	MAP_EXT 116 (not BERT; modern Erlang)           Map (entries in wire order)
//	{bert, nil}                                     nil
//	{bert, true}, {bert, false}                     true, false
//	{bert, dict, [{Key, Value}, ...]}               Dict
//	{bert, time, MegaSecs, Secs, MicroSecs}         time.Time (UTC)
//	{bert, regex, Source, Options}                  Regex
//	{bert, Other, ...} (unknown complex type)       Tuple, as sent
//
// Bare atoms true, false and nil stay atoms: only the complex forms are
// Go booleans and nil, as the BERT specification says.
//
// [Marshal] accepts those types and these conveniences:
//
//	Go value                                        Erlang term
//	----------------------------------------------  ----------------------------------------
//	every int and uint kind, *big.Int               SMALL_INTEGER_EXT for 0..255, INTEGER_EXT
//	                                                  for int32, else SMALL_BIG_EXT/LARGE_BIG_EXT
//	float32, float64 (finite)                       FLOAT_EXT, "%.20e" (never NEW_FLOAT_EXT)
//	Atom (at most 255 bytes)                        ATOM_EXT
//	string, []byte, other byte slices               BINARY_EXT (the Ruby gem's choice for strings)
//	Charlist                                        STRING_EXT (LIST_EXT above 65535 bytes)
//	Tuple                                           SMALL_TUPLE_EXT or LARGE_TUPLE_EXT
//	List, []any, other slices                       LIST_EXT, or NIL_EXT when empty
//	nil, bool                                       {bert, nil}, {bert, true}, {bert, false}
//	Dict                                            {bert, dict, [...]} in Dict order
//	map[string]V                                    {bert, dict, [...]}, binary keys, sorted
//	map[K]V, K of kind string (map[Atom]V)          {bert, dict, [...]}, keys as K, sorted
//	time.Time (not before 1970)                     {bert, time, ...}, to the microsecond
//	Regex, *Regex                                   {bert, regex, <<Source>>, Options}
//	named types of the kinds above                  as their kind
//
// Marshal refuses [Map] (maps are not BERT), NaN and infinities, atoms
// longer than 255 bytes, structs, channels, functions and nesting deeper
// than [DefaultMaxDepth]; its errors wrap [ErrUnsupported].
//
// Marshal writes only the tags of the BERT specification (97-100 and
// 104-111), so that old clients read everything it writes: the Ruby bert
// gem, for one, cannot read NEW_FLOAT_EXT or the UTF-8 atom tags.
// Unmarshal also reads what modern Erlang writes by default.
//
// Atoms are bytes: ATOM_EXT is Latin-1 in Erlang, while the Ruby gem puts
// UTF-8 there. Unmarshal returns the bytes as sent; only ASCII atoms mean
// the same thing to every peer.
//
// # Untrusted input
//
// Unmarshal is written for input from the network. Every malformed input
// gives an error wrapping [ErrMalformed] and every input over a [Limits]
// bound one wrapping [ErrLimit]; both are [*DecodeError] values with the
// byte offset. It never panics, and it never allocates according to a
// length field before checking that the input is long enough to hold what
// the length announces.
//
// # BERP
//
// A BERP is a BERT with a 4-byte big-endian length in front. [ReadPacket]
// and [WritePacket] read and write them; ReadPacket refuses packets longer
// than the maximum it is given with [ErrTooLarge].
package bert
