package testenv

import (
	"errors"
	"testing"
	"time"
)

func TestWaitForPolls(t *testing.T) {
	n := 0
	WaitFor(t, 5*time.Second, func() error {
		n++
		if n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}

func TestLoggerLevels(t *testing.T) {
	t.Setenv("WARREN_TEST_LOG", "")
	if Logger(t).Enabled(t.Context(), 12) {
		t.Fatal("logger enabled without WARREN_TEST_LOG")
	}
	t.Setenv("WARREN_TEST_LOG", "warn")
	l := Logger(t)
	if l.Enabled(t.Context(), -4) || !l.Enabled(t.Context(), 4) {
		t.Fatal("warn logger: wrong levels")
	}
}

func TestAMQPURLFromEnv(t *testing.T) {
	t.Setenv("WARREN_AMQP_URL", "amqp://x@y/")
	if got := AMQPURL(t); got != "amqp://x@y/" {
		t.Fatalf("AMQPURL = %q", got)
	}
}
