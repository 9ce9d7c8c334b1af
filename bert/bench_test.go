package bert

import "testing"

// request is a typical BERT-RPC call.
var request = Tuple{Atom("call"), Atom("photox"), Atom("img_size"), List{99, []byte("a medium sized argument binary"), 2.5, Dict{{Atom("user"), []byte("mojombo")}}}}

func BenchmarkMarshalCall(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Marshal(request); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendMarshalCall(b *testing.B) {
	b.ReportAllocs()
	buf := make([]byte, 0, 256)
	for b.Loop() {
		var err error
		if buf, err = AppendMarshal(buf[:0], request); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnmarshalCall(b *testing.B) {
	data, err := Marshal(request)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Unmarshal(data); err != nil {
			b.Fatal(err)
		}
	}
}
