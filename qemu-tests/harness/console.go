package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"
)

// Finding is one sign of trouble found in a console log or journal.
type Finding struct {
	Kind string // short name of the check, e.g. "kernel panic"
	Line int    // 1-based line number
	Text string // the line, trimmed, without terminal escapes
	// Warning marks signs of a starved host rather than of a broken guest (soft
	// lockups: common under TCG on an overloaded machine); tests log them.
	Warning bool
}

func (f Finding) String() string { return fmt.Sprintf("line %d: %s: %s", f.Line, f.Kind, f.Text) }

type badness struct {
	kind    string
	re      *regexp.Regexp
	warning bool
}

// The checks kola's CheckConsole makes (mantle/kola/harness.go), plus failed units.
var badnesses = []badness{
	{"kernel panic", regexp.MustCompile(`Kernel panic - not syncing`), false},
	{"soft lockup", regexp.MustCompile(`BUG: soft lockup - CPU#\d+ stuck`), true},
	{"kernel oops", regexp.MustCompile(`\bOops(: | - )`), false},
	{"kernel BUG", regexp.MustCompile(`\bBUG: `), false},
	{"hung task", regexp.MustCompile(`blocked for more than \d+ seconds`), false},
	{"failed unit", regexp.MustCompile(`Failed to start `), false},
	{"failed dependency", regexp.MustCompile(`Dependency failed for `), false},
	{"emergency mode", regexp.MustCompile(`(?i)(you are in emergency mode|entering emergency mode|Reached target .*Emergency Mode)`), false},
	{"go panic", regexp.MustCompile(`(^|[\s\]:])panic: `), false},
	{"go panic", regexp.MustCompile(`^goroutine \d+ \[running\]:`), false},
	{"oom killer", regexp.MustCompile(`(invoked oom-killer|Out of memory: Kill)`), false},
	{"ordering cycle", regexp.MustCompile(`(Ordering cycle found|Found ordering cycle)`), false},
}

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r`)

// ScanConsole returns the findings in a console log or journal text: kernel panics,
// oopses, BUG:, hung tasks, failed units and dependencies, emergency mode, Go panics,
// the OOM killer and systemd ordering cycles.
func ScanConsole(text string) []Finding {
	var out []Finding
	for i, line := range strings.Split(text, "\n") {
		clean := strings.TrimSpace(ansiEscape.ReplaceAllString(line, ""))
		if clean == "" {
			continue
		}
		for _, b := range badnesses {
			if b.re.MatchString(clean) {
				out = append(out, Finding{Kind: b.kind, Line: i + 1, Text: clean, Warning: b.warning})
				break
			}
		}
	}
	return out
}

// Console returns the whole console log of the machine (all its boots).
func (m *Machine) Console() (string, error) {
	b, err := os.ReadFile(m.console)
	return string(b), err
}

// ScanConsole scans the machine's whole console log.
func (m *Machine) ScanConsole() ([]Finding, error) {
	s, err := m.Console()
	if err != nil {
		return nil, err
	}
	return ScanConsole(s), nil
}

// ConsoleOffset is the console log size now; pass it to WaitConsoleFrom to match only
// output written after this point.
func (m *Machine) ConsoleOffset() int64 {
	st, err := os.Stat(m.console)
	if err != nil {
		return 0
	}
	return st.Size()
}

// WaitConsole waits until re matches console output of the current boot (since the
// last Start, Reset or Reboot) and returns the match.
func (m *Machine) WaitConsole(ctx context.Context, re *regexp.Regexp) (string, error) {
	m.mu.Lock()
	off := m.conStart
	m.mu.Unlock()
	return m.WaitConsoleFrom(ctx, off, re)
}

// WaitConsoleFrom waits until re matches console output written after offset.
func (m *Machine) WaitConsoleFrom(ctx context.Context, offset int64, re *regexp.Regexp) (string, error) {
	var buf []byte
	for {
		if f, err := os.Open(m.console); err == nil {
			if _, err := f.Seek(offset+int64(len(buf)), io.SeekStart); err == nil {
				b, _ := io.ReadAll(f)
				buf = append(buf, b...)
			}
			f.Close()
		}
		clean := ansiEscape.ReplaceAll(buf, nil)
		if loc := re.FindIndex(clean); loc != nil {
			return string(bytes.TrimSpace(clean[loc[0]:loc[1]])), nil
		}
		select {
		case <-ctx.Done():
			tail := clean
			if len(tail) > 400 {
				tail = tail[len(tail)-400:]
			}
			return "", fmt.Errorf("machine %s: console never matched %q: %w; last output: %q", m.cfg.Name, re, ctx.Err(), tail)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
