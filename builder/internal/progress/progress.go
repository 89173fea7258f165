// Package progress reports build stages. Libraries call a Reporter; only the
// main package decides where the lines go (stderr).
package progress

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Reporter receives the start and end of each stage.
type Reporter interface {
	// Start announces a stage; detail says what it does.
	Start(stage, detail string)
	// Done ends the stage started last under that name.
	Done(stage, detail string)
}

// Nop discards everything.
type Nop struct{}

// Start implements Reporter.
func (Nop) Start(string, string) {}

// Done implements Reporter.
func (Nop) Done(string, string) {}

// Timing is how long one stage took.
type Timing struct {
	Stage    string
	Duration time.Duration
}

// Text writes one line per event with the time since the build started:
//
//	[   0.0s] rootfs: mmdebstrap bookworm (22 packages)
//	[  81.4s] rootfs: done in 81.4s (cached as 3f2a...)
type Text struct {
	W   io.Writer
	Now func() time.Time // default time.Now

	mu      sync.Mutex
	start   time.Time
	started map[string]time.Time
	timings []Timing
}

func (t *Text) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

// Start implements Reporter.
func (t *Text) Start(stage, detail string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if t.start.IsZero() {
		t.start = now
	}
	if t.started == nil {
		t.started = map[string]time.Time{}
	}
	t.started[stage] = now
	fmt.Fprintf(t.W, "[%7.1fs] %s: %s\n", now.Sub(t.start).Seconds(), stage, detail)
}

// Done implements Reporter.
func (t *Text) Done(stage, detail string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if t.start.IsZero() {
		t.start = now
	}
	d := now.Sub(t.started[stage])
	if _, ok := t.started[stage]; !ok {
		d = 0
	}
	t.timings = append(t.timings, Timing{Stage: stage, Duration: d})
	if detail != "" {
		detail = " (" + detail + ")"
	}
	fmt.Fprintf(t.W, "[%7.1fs] %s: done in %.1fs%s\n", now.Sub(t.start).Seconds(), stage, d.Seconds(), detail)
}

// Timings returns the finished stages in order.
func (t *Text) Timings() []Timing {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Timing(nil), t.timings...)
}
