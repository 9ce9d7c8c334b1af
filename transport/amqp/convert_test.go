package amqp

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/warrenrpc/warren/transport"
)

func TestToValue(t *testing.T) {
	ts := time.Unix(1, 0)
	tests := []struct {
		name    string
		in      any
		want    any
		wantErr string
	}{
		{"string", "s", "s", ""},
		{"bytes", []byte("b"), []byte("b"), ""},
		{"bool", true, true, ""},
		{"int32", int32(-1), int32(-1), ""},
		{"int64", int64(1), int64(1), ""},
		{"float64", 1.5, 1.5, ""},
		{"time", ts, ts, ""},
		{"nil", nil, nil, ""},
		{"int", 5, int64(5), ""},
		{"int8", int8(-5), int64(-5), ""},
		{"int16", int16(-5), int64(-5), ""},
		{"uint8", uint8(5), int64(5), ""},
		{"uint16", uint16(5), int64(5), ""},
		{"uint32", uint32(math.MaxUint32), int64(math.MaxUint32), ""},
		{"uint", uint(5), int64(5), ""},
		{"uint64", uint64(5), int64(5), ""},
		{"uint64 overflow", uint64(math.MaxUint64), nil, "overflows"},
		{"float32", float32(1), nil, "unsupported type float32"},
		{"struct", struct{}{}, nil, "unsupported type"},
		{"slice", []any{1, "a"}, []any{int64(1), "a"}, ""},
		{"bad slice", []any{1, struct{}{}}, nil, "element 1"},
		{"map", map[string]any{"k": uint8(1)}, amqp091.Table{"k": int64(1)}, ""},
		{"bad map", map[string]any{"k": []string{"x"}}, nil, `header "k"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := toValue(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestFromValue(t *testing.T) {
	ts := time.Unix(1, 0)
	tests := []struct {
		in, want any
	}{
		{int8(-1), int64(-1)},
		{int16(-1), int64(-1)},
		{uint8(1), int64(1)},
		{uint16(1), int64(1)},
		{uint32(1), int64(1)},
		{int32(1), int32(1)},
		{int64(1), int64(1)},
		{float32(0.5), 0.5},
		{amqp091.Decimal{Scale: 2, Value: 12345}, 123.45},
		{ts, ts.UTC()},
		{amqp091.Table{"a": int8(1)}, map[string]any{"a": int64(1)}},
		{[]any{int16(1), amqp091.Table{}}, []any{int64(1), map[string]any{}}},
		{nil, nil},
		{"s", "s"},
	}
	for _, tc := range tests {
		if got := fromValue(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("fromValue(%#v) = %#v, want %#v", tc.in, got, tc.want)
		}
	}
}

func TestPublishingRoundTrip(t *testing.T) {
	m := transport.Message{
		Body:       []byte("x"),
		Headers:    map[string]any{"k": "v"},
		Expiration: 1500 * time.Microsecond,
		Persistent: true,
		Timestamp:  time.Unix(5, 0),
	}
	p, err := toPublishing(m)
	if err != nil {
		t.Fatal(err)
	}
	if p.Expiration != "2" || p.DeliveryMode != amqp091.Persistent {
		t.Fatalf("expiration %q, delivery mode %d", p.Expiration, p.DeliveryMode)
	}
	p.Headers[returnTokenHeader] = int64(7)
	got := fromDelivery(&amqp091.Delivery{
		Headers: p.Headers, Body: p.Body, Expiration: p.Expiration,
		DeliveryMode: p.DeliveryMode, Timestamp: p.Timestamp,
	})
	if _, ok := got.Headers[returnTokenHeader]; ok {
		t.Error("return token not stripped")
	}
	if got.Expiration != 2*time.Millisecond || !got.Persistent || !got.Timestamp.Equal(m.Timestamp) {
		t.Errorf("got %+v", got)
	}
	if _, err := toPublishing(transport.Message{Expiration: -1}); err == nil {
		t.Error("negative expiration accepted")
	}
	if p, err := toPublishing(transport.Message{Expiration: MaxExpiration}); err != nil || p.Expiration != "4294967295" {
		t.Errorf("MaxExpiration: %q, %v", p.Expiration, err)
	}
	if _, err := toPublishing(transport.Message{Expiration: MaxExpiration + time.Millisecond}); err == nil || !strings.Contains(err.Error(), "over RabbitMQ's limit") {
		t.Errorf("expiration over the limit: err = %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:guest@127.0.0.1:5672/": "amqp://guest:xxxxx@127.0.0.1:5672/",
		"amqps://u@h/v":                      "amqps://u@h/v",
		"amqp://h":                           "amqp://h",
		// Passwords that URL parsers misread: a '/', '#', '?' or '@'.
		"amqp://guest:9999/topsecret@127.0.0.1:5672/": "amqp://guest:xxxxx@127.0.0.1:5672/",
		"amqp://guest:se#cret@h/":                     "amqp://guest:xxxxx@h/",
		"amqp://guest:a?b@c@h:5672/v":                 "amqp://guest:xxxxx@h:5672/v",
		"guest:pw@h":                                  "guest:xxxxx@h",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
