package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 25, 3, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func TestLostAndGap(t *testing.T) {
	ws := []Write{
		{ID: 1, At: at(100), OK: true, Node: "a"},
		{ID: 2, At: at(200), OK: true, Node: "a"},
		{ID: 3, At: at(1200), OK: false, Err: "conn refused"},
		{ID: 4, At: at(4200), OK: true, Node: "b"},
		{ID: 5, At: at(4300), OK: true, Node: "b"},
	}
	if got := Lost(ws, []int64{1, 2, 4, 5}); len(got) != 0 {
		t.Fatalf("lost %v", got)
	}
	if got := Lost(ws, []int64{1, 4}); !slices.Equal(got, []int64{2, 5}) {
		t.Fatalf("lost %v, want [2 5]", got)
	}
	if g := MaxGap(ws, at(0), at(5000)); g != 4*time.Second {
		t.Fatalf("gap %s, want 4s", g)
	}
	if g := MaxGap(ws, at(0), at(10000)); g != 5700*time.Millisecond {
		t.Fatalf("gap to the end %s, want 5.7s", g)
	}
	if w, ok := FirstAckAfter(ws, at(300)); !ok || w.ID != 4 {
		t.Fatalf("first ack after: %+v %v", w, ok)
	}
}

func TestLongestGapExplains(t *testing.T) {
	ws := []Write{
		{ID: 1, At: at(100), OK: true, Node: "a"},
		{ID: 2, At: at(600), OK: false, Err: "timeout"}, // inside a shorter gap: not counted
		{ID: 3, At: at(1000), OK: true, Node: "a"},
		{ID: 4, At: at(2000), OK: false, Err: "timeout"},
		{ID: 5, At: at(3000), OK: false, Err: "connection refused"},
		{ID: 6, At: at(4000), OK: false, Err: "connection refused"},
		{ID: 7, At: at(5000), OK: false, Err: "connection refused"},
		{ID: 8, At: at(6000), OK: true, Node: "b"},
	}
	g := LongestGap(ws, at(0), at(6500))
	if !g.From.Equal(at(1000)) || !g.To.Equal(at(6000)) {
		t.Fatalf("gap %s..%s, want 1s..6s", g.From.Sub(t0), g.To.Sub(t0))
	}
	want := []ErrCount{
		{Err: "connection refused", Count: 3, First: at(3000), Last: at(5000)},
		{Err: "timeout", Count: 1, First: at(2000), Last: at(2000)},
	}
	if !slices.Equal(g.Errors, want) {
		t.Fatalf("errors %+v, want %+v", g.Errors, want)
	}
	if got, w := g.Explain(), "longest gap 5.0s: 3× connection refused | 1× timeout"; got != w {
		t.Errorf("Explain() = %q, want %q", got, w)
	}
	// No acknowledged write at all: the whole period is the gap.
	if g := LongestGap(ws[3:4], at(0), at(9000)); g.Length() != 9*time.Second || len(g.Errors) != 1 {
		t.Errorf("gap without acks: %s %+v", g.Length(), g.Errors)
	}
	if got := (Gap{From: at(0), To: at(1500)}).Explain(); got != "longest gap 1.5s: no failed attempt inside it" {
		t.Errorf("quiet gap: %q", got)
	}
}

func TestInterleavings(t *testing.T) {
	clean := []Write{{ID: 1, At: at(0), OK: true, Node: "a"}, {ID: 2, At: at(100), OK: true, Node: "b"}, {ID: 3, At: at(200), OK: true, Node: "b"}}
	if got := Interleavings(clean, time.Minute); len(got) != 0 {
		t.Fatalf("clean failover flagged: %v", got)
	}
	split := append(clean, Write{ID: 4, At: at(300), OK: true, Node: "a"})
	if got := Interleavings(split, time.Minute); len(got) != 1 || !strings.Contains(got[0], "write 4") {
		t.Fatalf("split brain not flagged: %v", got)
	}
	// Failing back long after a second failover is legitimate.
	back := append(clean, Write{ID: 4, At: at(120000), OK: true, Node: "a"})
	if got := Interleavings(back, time.Minute); len(got) != 0 {
		t.Fatalf("legitimate failback flagged: %v", got)
	}
}

func TestSummary(t *testing.T) {
	s := Summary{RunID: "qemu-1", Accelerator: "tcg", ControlPlane: "stand-in", Results: []Result{
		{Scenario: "b-poweroff", Pass: false, Notes: "timeout"},
		{Scenario: "a-pg-stop", Pass: true, FailoverSeconds: 4.25, WriteUnavailSecs: 5.5, DurationSeconds: 80, AcknowledgedWrite: 700},
	}}
	tab := s.Table()
	lines := strings.Split(strings.TrimSpace(tab), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], "TCG") || !strings.HasPrefix(lines[2], "a-pg-stop") || !strings.Contains(lines[2], "4.2") || !strings.Contains(lines[3], "FAIL") {
		t.Fatalf("table:\n%s", tab)
	}
	p := filepath.Join(t.TempDir(), "summary.json")
	if err := s.WriteJSON(p); err != nil {
		t.Fatal(err)
	}
	var back Summary
	b, _ := os.ReadFile(p)
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != 2 || back.Results[1].FailoverSeconds != 4.25 {
		t.Fatalf("json round trip: %v %+v", err, back)
	}
}
