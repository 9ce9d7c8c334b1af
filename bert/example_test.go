package bert_test

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/warrenrpc/warren/bert"
)

func Example() {
	req := bert.Tuple{bert.Atom("call"), bert.Atom("photox"), bert.Atom("img_size"), []any{99}}
	b, err := bert.Marshal(req)
	if err != nil {
		panic(err)
	}
	fmt.Println(b)

	v, err := bert.Unmarshal(b)
	if err != nil {
		panic(err)
	}
	t := v.(bert.Tuple)
	fmt.Println(bert.Format(t), t[2] == bert.Atom("img_size"), bert.Equal(v, req))
	// Output:
	// [131 104 4 100 0 4 99 97 108 108 100 0 6 112 104 111 116 111 120 100 0 8 105 109 103 95 115 105 122 101 108 0 0 0 1 97 99 106]
	// {call,photox,img_size,[99]} true true
}

func ExampleMarshal_complexTypes() {
	v := []any{
		nil,
		true,
		map[string]any{"name": "Tom", "age": 30},
		time.Date(2009, 10, 11, 14, 12, 1, 446228000, time.UTC),
		bert.Regex{Source: "^c(a*)t$", Options: bert.List{bert.Atom("caseless")}},
	}
	b, err := bert.Marshal(v)
	if err != nil {
		panic(err)
	}
	back, _ := bert.Unmarshal(b)
	fmt.Println(bert.Format(back))
	for _, e := range back.(bert.List) {
		fmt.Printf("%T\n", e)
	}
	// Output:
	// [{bert,nil},{bert,true},{bert,dict,[{<<"age">>,30},{<<"name">>,<<"Tom">>}]},{bert,time,1255,270321,446228},{bert,regex,<<"^c(a*)t$">>,[caseless]}]
	// <nil>
	// bool
	// bert.Dict
	// time.Time
	// bert.Regex
}

func ExampleUnmarshal_modernErlang() {
	// term_to_binary(#{ok => 1.5}) in OTP 26: a map, a UTF-8 atom and
	// NEW_FLOAT_EXT. Unmarshal reads them; Marshal would refuse the map.
	b := []byte{131, 116, 0, 0, 0, 1, 119, 2, 111, 107, 70, 63, 248, 0, 0, 0, 0, 0, 0}
	v, err := bert.Unmarshal(b)
	fmt.Println(bert.Format(v), err)
	_, err = bert.Marshal(v)
	fmt.Println(err)
	// Output:
	// #{ok => 1.5} <nil>
	// bert: unsupported value: maps are not BERT (Map with 1 entries)
}

func ExampleUnmarshalLimits() {
	// A list that claims 4 billion elements in a 10-byte input.
	b := []byte{131, 108, 255, 255, 255, 255, 97, 1, 106, 106}
	_, err := bert.UnmarshalLimits(b, bert.Limits{MaxDepth: 8})
	fmt.Println(err)
	fmt.Println(errors.Is(err, bert.ErrMalformed))
	// Output:
	// bert: malformed term at offset 1: list of 4294967295 elements cannot fit in the remaining 4 bytes
	// true
}

func ExampleReadPacket() {
	var conn bytes.Buffer // stands for a net.Conn
	req, _ := bert.Marshal(bert.Tuple{bert.Atom("call"), bert.Atom("m"), bert.Atom("f"), bert.List{}})
	if err := bert.WritePacket(&conn, req); err != nil {
		panic(err)
	}
	p, err := bert.ReadPacket(&conn, 1<<20)
	if err != nil {
		panic(err)
	}
	v, err := bert.Unmarshal(p)
	fmt.Println(bert.Format(v), err)
	_, err = bert.ReadPacket(&conn, 1<<20)
	fmt.Println(err)
	// Output:
	// {call,m,f,[]} <nil>
	// EOF
}

func ExampleFormat() {
	fmt.Println(bert.Format(bert.Tuple{
		bert.Atom("error"),
		bert.Tuple{bert.Atom("user"), 100, "RuntimeError", []byte{0, 1}, bert.Atom("Bad Atom"), 2.5e-7, bert.Charlist("abc")},
	}))
	// Output:
	// {error,{user,100,<<"RuntimeError">>,<<0,1>>,'Bad Atom',2.5e-7,"abc"}}
}

func ExampleEqual() {
	decoded, _ := bert.Unmarshal([]byte{131, 107, 0, 2, 104, 105}) // "hi" as Erlang sends it
	fmt.Println(bert.Equal(decoded, bert.List{104, 105}))          // "hi" =:= [104,105]
	fmt.Println(bert.Equal(decoded, "hi"))                         // a binary is not a list
	fmt.Println(bert.Equal(int64(7), uint8(7)), bert.Equal(7, 7.0))
	// Output:
	// true
	// false
	// true false
}
