package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/warrenrpc/warren/internal/fabrictest"
	"github.com/warrenrpc/warren/internal/testenv"
)

// otlpSpan is what the test reads of a span sent as OTLP/HTTP JSON.
type otlpSpan struct {
	Service                   string
	TraceID, SpanID, ParentID string
	Name                      string
}

// otlpReceiver is an OTLP/HTTP collector (JSON encoding) in the test.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []otlpSpan
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var msg struct {
		ResourceSpans []struct {
			Resource struct {
				Attributes []struct {
					Key   string `json:"key"`
					Value struct {
						StringValue string `json:"stringValue"`
					} `json:"value"`
				} `json:"attributes"`
			} `json:"resource"`
			ScopeSpans []struct {
				Spans []struct {
					TraceID      string `json:"traceId"`
					SpanID       string `json:"spanId"`
					ParentSpanID string `json:"parentSpanId"`
					Name         string `json:"name"`
				} `json:"spans"`
			} `json:"scopeSpans"`
		} `json:"resourceSpans"`
	}
	if req.URL.Path != "/v1/traces" || json.Unmarshal(body, &msg) != nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range msg.ResourceSpans {
		service := ""
		for _, a := range rs.Resource.Attributes {
			if a.Key == "service.name" {
				service = a.Value.StringValue
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				r.spans = append(r.spans, otlpSpan{service, s.TraceID, s.SpanID, s.ParentSpanID, s.Name})
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte("{}"))
}

func (r *otlpReceiver) all() []otlpSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]otlpSpan(nil), r.spans...)
}

// TestTraceCrossesTwoProcesses runs `warren agent` and `warren request` as
// processes with the standard OTEL_* variables pointing at an OTLP
// receiver in the test: the request's send span and the agent's process
// span are one trace, parent and child.
func TestTraceCrossesTwoProcesses(t *testing.T) {
	url := testenv.AMQPURL(t)
	bin := filepath.Join(t.TempDir(), "warren")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/warrenrpc/warren/cmd/warren").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	recv := &otlpReceiver{}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	env := []string{
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + srv.URL,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/json",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}
	id := fabrictest.Actor()
	agent := exec.Command(bin, "agent", "--broker", url, "--token", id, "--ping", "1s")
	agent.Env = append(agent.Environ(), env...)
	var agentErr bytes.Buffer
	agent.Stderr = &agentErr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if agent.ProcessState == nil {
			agent.Process.Kill()
			agent.Wait()
		}
		if t.Failed() {
			t.Logf("agent stderr:\n%s", agentErr.String())
		}
	})
	request := func(path string, args ...string) error {
		cmd := exec.Command(bin, append([]string{"request", path, "--selector", "agent:" + id, "--broker", url, "--timeout", "3s"}, args...)...)
		cmd.Env = append(cmd.Environ(), append(env, "OTEL_SERVICE_NAME=the-requester")...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if _, err := cmd.Output(); err != nil {
			return &exitErr{err, stderr.String()}
		}
		return nil
	}
	testenv.WaitFor(t, 20*time.Second, func() error { return request("/simple/whoami") })
	if err := request("/simple/echo", `"traced"`); err != nil {
		t.Fatal(err)
	}
	agent.Process.Signal(syscall.SIGTERM)
	if err := agent.Wait(); err != nil {
		t.Fatalf("agent: %v", err)
	}
	// Both processes flushed their spans as they exited.
	var send, process *otlpSpan
	for _, s := range recv.all() {
		switch {
		case s.Name == "send /simple/echo" && s.Service == "the-requester":
			send = &s
		case s.Name == "process /simple/echo" && s.Service == "warren-agent":
			process = &s
		}
	}
	t.Logf("%d spans received, send %+v, process %+v", len(recv.all()), send, process)
	if send == nil || process == nil {
		t.Fatalf("spans: send %v, process %v, of %+v", send, process, recv.all())
	}
	if send.TraceID == "" || process.TraceID != send.TraceID || process.ParentID != send.SpanID {
		t.Errorf("not one trace: send %+v, process %+v", *send, *process)
	}
}
