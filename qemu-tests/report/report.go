// Package report holds the pure parts of the QEMU pair tests: the write log a
// client keeps while it writes through the VIP, its analysis (acknowledged writes
// lost, two nodes accepting writes in the same period, write-unavailability
// windows), and the summary table printed and saved as JSON for every run.
package report

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Write is one attempt of the client's writer.
type Write struct {
	ID   int64     `json:"id"`
	At   time.Time `json:"at"`   // when the attempt finished
	OK   bool      `json:"ok"`   // acknowledged (COMMIT returned)
	Node string    `json:"node"` // node that acknowledged it (cluster_name)
	Err  string    `json:"err,omitempty"`
}

// WriteLog collects writes concurrently.
type WriteLog struct {
	mu     sync.Mutex
	writes []Write
}

// Add records one attempt.
func (l *WriteLog) Add(w Write) {
	l.mu.Lock()
	l.writes = append(l.writes, w)
	l.mu.Unlock()
}

// Snapshot returns the attempts so far, in order.
func (l *WriteLog) Snapshot() []Write {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Write(nil), l.writes...)
}

// Acked returns the ids of acknowledged writes.
func Acked(ws []Write) []int64 {
	var ids []int64
	for _, w := range ws {
		if w.OK {
			ids = append(ids, w.ID)
		}
	}
	return ids
}

// Lost returns the acknowledged ids missing from present (the ids found in the
// database afterwards).
func Lost(ws []Write, present []int64) []int64 {
	have := make(map[int64]bool, len(present))
	for _, id := range present {
		have[id] = true
	}
	var lost []int64
	for _, id := range Acked(ws) {
		if !have[id] {
			lost = append(lost, id)
		}
	}
	return lost
}

// MaxGap is the longest time between consecutive acknowledged writes that finished
// inside [from, to] (also counting from `from` to the first and from the last to
// `to`): the write-unavailability window of that period.
func MaxGap(ws []Write, from, to time.Time) time.Duration {
	return LongestGap(ws, from, to).Length()
}

// Gap is a write-unavailability window and what the writer was told inside it.
type Gap struct {
	From   time.Time  `json:"from"`
	To     time.Time  `json:"to"`
	Errors []ErrCount `json:"errors,omitempty"` // most frequent first
}

// ErrCount is one distinct error of the failed attempts in a gap.
type ErrCount struct {
	Err   string    `json:"err"`
	Count int       `json:"count"`
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
}

// Length is the gap's duration.
func (g Gap) Length() time.Duration { return g.To.Sub(g.From) }

// Explain is a short account of the gap for the summary's notes: its length and
// the two most frequent errors (each cut to 100 bytes).
func (g Gap) Explain() string {
	if len(g.Errors) == 0 {
		return fmt.Sprintf("longest gap %.1fs: no failed attempt inside it", g.Length().Seconds())
	}
	var parts []string
	for _, e := range g.Errors[:min(2, len(g.Errors))] {
		msg := e.Err
		if len(msg) > 100 {
			msg = msg[:100] + "…"
		}
		parts = append(parts, fmt.Sprintf("%d× %s", e.Count, msg))
	}
	return fmt.Sprintf("longest gap %.1fs: %s", g.Length().Seconds(), strings.Join(parts, " | "))
}

// LongestGap is the window MaxGap measures, with the distinct errors of the failed
// attempts that finished inside it, so a long window explains itself (a dead
// connection timing out, a refused connection, a commit waiting for a standby).
func LongestGap(ws []Write, from, to time.Time) Gap {
	prev := from
	best := Gap{From: from, To: from}
	for _, w := range ws {
		if !w.OK || w.At.Before(from) || w.At.After(to) {
			continue
		}
		if w.At.Sub(prev) > best.Length() {
			best = Gap{From: prev, To: w.At}
		}
		prev = w.At
	}
	if to.Sub(prev) > best.Length() {
		best = Gap{From: prev, To: to}
	}
	idx := map[string]int{}
	for _, w := range ws {
		if w.OK || w.At.Before(best.From) || w.At.After(best.To) {
			continue
		}
		i, ok := idx[w.Err]
		if !ok {
			i = len(best.Errors)
			idx[w.Err] = i
			best.Errors = append(best.Errors, ErrCount{Err: w.Err, First: w.At})
		}
		best.Errors[i].Count++
		best.Errors[i].Last = w.At
	}
	sort.SliceStable(best.Errors, func(i, j int) bool { return best.Errors[i].Count > best.Errors[j].Count })
	return best
}

// FirstAckAfter returns the first acknowledged write that finished after t.
func FirstAckAfter(ws []Write, t time.Time) (Write, bool) {
	for _, w := range ws {
		if w.OK && w.At.After(t) {
			return w, true
		}
	}
	return Write{}, false
}

// Interleavings reports moments when acknowledgements switched back to a node that
// had already been replaced (A, B, A): after a failover the old primary accepted
// writes again while the new one did too, i.e. two nodes accepting writes in the
// same period. A plain failover (A...A, B...B) and a later switch back after a
// second failover that happens more than minSettle after the first are not flagged.
func Interleavings(ws []Write, minSettle time.Duration) []string {
	var out []string
	var cur string
	var switchedAt time.Time
	var prevNode string
	for _, w := range ws {
		if !w.OK || w.Node == "" {
			continue
		}
		if cur == "" {
			cur = w.Node
			continue
		}
		if w.Node != cur {
			if w.Node == prevNode && w.At.Sub(switchedAt) < minSettle {
				out = append(out, fmt.Sprintf("write %d at %s acknowledged by %s although %s took over at %s",
					w.ID, w.At.Format("15:04:05.000"), w.Node, cur, switchedAt.Format("15:04:05.000")))
			}
			prevNode, cur, switchedAt = cur, w.Node, w.At
		}
	}
	return out
}

// Result is one scenario's line in the summary.
type Result struct {
	Scenario          string  `json:"scenario"`
	Pass              bool    `json:"pass"`
	Skipped           bool    `json:"skipped,omitempty"`
	FailoverSeconds   float64 `json:"failoverSeconds,omitempty"`
	WriteUnavailSecs  float64 `json:"writeUnavailabilitySeconds,omitempty"`
	DurationSeconds   float64 `json:"durationSeconds"`
	Notes             string  `json:"notes,omitempty"`
	AcknowledgedWrite int     `json:"acknowledgedWrites,omitempty"`
	LostWrites        int     `json:"lostWrites"`
	// LongestGap is the write-unavailability window with what the writer was told.
	LongestGap *Gap `json:"longestGap,omitempty"`
}

// Summary is the whole run.
type Summary struct {
	RunID        string    `json:"runId"`
	Accelerator  string    `json:"accelerator"` // "tcg" or "kvm"
	ControlPlane string    `json:"controlPlane"`
	Started      time.Time `json:"started"`
	Results      []Result  `json:"results"`
}

// Table renders the summary as an aligned text table.
func (s Summary) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "run %s, accelerator %s, control plane: %s\n", s.RunID, strings.ToUpper(s.Accelerator), s.ControlPlane)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tRESULT\tFAILOVER s\tWRITES UNAVAILABLE s\tTOOK s\tACKED/LOST\tNOTES")
	rs := append([]Result(nil), s.Results...)
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Scenario < rs[j].Scenario })
	for _, r := range rs {
		res := "FAIL"
		switch {
		case r.Skipped:
			res = "SKIP"
		case r.Pass:
			res = "pass"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.1f\t%d/%d\t%s\n", r.Scenario, res, secs(r.FailoverSeconds), secs(r.WriteUnavailSecs),
			r.DurationSeconds, r.AcknowledgedWrite, r.LostWrites, r.Notes)
	}
	tw.Flush()
	return b.String()
}

func secs(f float64) string {
	if f == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", f)
}

// WriteJSON saves the summary (indented) to path.
func (s Summary) WriteJSON(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("summary: %w", err)
	}
	return nil
}
