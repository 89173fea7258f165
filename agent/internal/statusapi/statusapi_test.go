package statusapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgepair/edgepair/agent/internal/ha"
	"github.com/edgepair/edgepair/agent/internal/heartbeat"
)

type src struct {
	s   ha.Status
	err error
	req int
}

func (f *src) Status() ha.Status        { return f.s }
func (f *src) RequestSwitchover() error { f.req++; return f.err }
func (f *src) ForcePrimary() error      { f.req++; return f.err }

func TestEndpoints(t *testing.T) {
	f := &src{s: ha.Status{Node: "a", Role: heartbeat.RolePrimary, Term: 3, SyncOn: true, SyncStandby: "b", VIPHeld: true,
		PG: ha.PGStatus{Up: true, LSN: 0x3000148, Timeline: 2}, PeerAgeMs: 120,
		Peer: &heartbeat.Message{Node: "b", Role: heartbeat.RoleStandby, Term: 3, Serving: true, LSN: 0x3000100}}}
	srv := httptest.NewServer(Handler(f))
	defer srv.Close()
	s, err := Fetch(context.Background(), srv.URL)
	if err != nil || s.Term != 3 || s.Peer.Node != "b" {
		t.Fatalf("fetch: %+v %v", s, err)
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`edgepair_role{role="primary"} 1`, `edgepair_term 3`, `edgepair_vip_held 1`, `edgepair_sync_replication 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if err := Switchover(context.Background(), srv.URL); err != nil || f.req != 1 {
		t.Fatalf("switchover: %v %d", err, f.req)
	}
	f.err = errors.New("peer not reachable")
	if err := Switchover(context.Background(), srv.URL); err == nil || !strings.Contains(err.Error(), "peer not reachable") {
		t.Fatalf("refusal not reported: %v", err)
	}
	var b bytes.Buffer
	if err := PrintTable(&b, s); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"a (self)", "primary", "sync(b)", "0/3000148", "standby"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestSwitchoverOnlyFromLoopback(t *testing.T) {
	f := &src{}
	h := Handler(f)
	r := httptest.NewRequest(http.MethodPost, "/switchover", nil)
	r.RemoteAddr = "198.18.0.99:4444"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusForbidden || f.req != 0 {
		t.Fatalf("code %d req %d", w.Code, f.req)
	}
}
