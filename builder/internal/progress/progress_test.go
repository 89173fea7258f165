package progress

import (
	"strings"
	"testing"
	"time"
)

func TestTextLinesAndTimings(t *testing.T) {
	var b strings.Builder
	now := time.Unix(1000, 0)
	tx := &Text{W: &b, Now: func() time.Time { return now }}
	tx.Start("base", "mmdebstrap bookworm")
	now = now.Add(81400 * time.Millisecond)
	tx.Done("base", "cached as abc")
	tx.Start("compress", "squashfs zstd")
	now = now.Add(2 * time.Second)
	tx.Done("compress", "")
	want := "[    0.0s] base: mmdebstrap bookworm\n" +
		"[   81.4s] base: done in 81.4s (cached as abc)\n" +
		"[   81.4s] compress: squashfs zstd\n" +
		"[   83.4s] compress: done in 2.0s\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	ts := tx.Timings()
	if len(ts) != 2 || ts[0].Stage != "base" || ts[0].Duration != 81400*time.Millisecond || ts[1].Duration != 2*time.Second {
		t.Errorf("timings %v", ts)
	}
}
