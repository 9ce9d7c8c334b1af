package amqp_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/testenv"
	"github.com/warrenrpc/warren/transport/amqp"
)

func TestSplitURLs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"amqp://h/", []string{"amqp://h/"}},
		{"amqp://a:1/, amqps://b:2/v,amqp://c/", []string{"amqp://a:1/", "amqps://b:2/v", "amqp://c/"}},
		// A comma in a password is not a separator.
		{"amqp://u:p,q@a/,amqp://u:p,amqp@b/", []string{"amqp://u:p,q@a/", "amqp://u:p,amqp@b/"}},
		{"", []string{""}},
	} {
		if got := amqp.SplitURLs(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("SplitURLs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	got := amqp.RedactURL("amqp://u:s3cret@a:1/,amqp://u:s3cret,x@b:2/")
	if got != "amqp://u:xxxxx@a:1/,amqp://u:xxxxx@b:2/" {
		t.Errorf("RedactURL of a list: %q", got)
	}
}

// TestDialTriesEachNode: Dial with a list skips a node that refuses and
// connects to the next; with none reachable the error names every node,
// without passwords.
func TestDialTriesEachNode(t *testing.T) {
	url := testenv.AMQPURL(t)
	dead := "amqp://guest:s3cret@127.0.0.1:1/"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tr, err := amqp.Dial(ctx, dead+","+url, amqp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if got, want := tr.Node(), amqp.RedactURL(url); got != want {
		t.Errorf("connected to %q, want %q", got, want)
	}
	_, err = amqp.Dial(ctx, dead+","+strings.Replace(dead, ":1/", ":2/", 1), amqp.Config{})
	var de *amqp.DialError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "127.0.0.1:1") || !strings.Contains(err.Error(), "127.0.0.1:2") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("no node reachable: %v", err)
	}
}
