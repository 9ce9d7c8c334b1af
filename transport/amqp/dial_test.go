package amqp

import (
	"testing"
	"time"
)

// TestURIHeartbeat: the heartbeat=<seconds> of the URL wins over
// Config.Heartbeat, as with amqp091.DialConfig.
func TestURIHeartbeat(t *testing.T) {
	for url, want := range map[string]time.Duration{
		"amqp://h/?heartbeat=5": 5 * time.Second,
		"amqps://u:p@h:5671/v?auth_mechanism=external&heartbeat=0": 0,
	} {
		if got, ok := uriHeartbeat(url); !ok || got != want {
			t.Errorf("%s: %v %v, want %v", url, got, ok, want)
		}
	}
	for _, url := range []string{"amqp://h/", "amqp://h/?heartbeat_x=1", "amqp://h/?heartbeat=x"} {
		if got, ok := uriHeartbeat(url); ok {
			t.Errorf("%s: %v, want none", url, got)
		}
	}
}
