//go:build integration

package nstest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgepair/edgepair/agent/internal/ha"
	"github.com/edgepair/edgepair/agent/pairconfig"
)

var agentBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "ep-agent-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			if err := os.Chmod(dir, 0o755); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			agentBin = filepath.Join(dir, "edgepair-agent")
			out, err := exec.Command("go", "build", "-o", agentBin, "github.com/edgepair/edgepair/agent/cmd/agent").CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "building the agent: %v\n%s", err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// startHealthy boots a fresh pair and waits for node-a primary with node-b
// as its synchronous standby.
func startHealthy(t *testing.T) *Pair {
	Requirements(t)
	p := NewPair(t, agentBin, pairconfig.Timeouts{})
	start := time.Now()
	p.StartAgent(0)
	p.StartAgent(1)
	p.WaitFor("first boot: a primary, b synchronous standby", 90*time.Second, Healthy(0))
	t.Logf("first boot to a healthy synchronous pair: %s", time.Since(start).Round(10*time.Millisecond))
	return p
}

// result is one measured failover, logged in a greppable line for
// BENCHMARKS.md.
type result struct {
	failover, unavailable, rejoin time.Duration
}

func logResult(t *testing.T, scenario string, r result) {
	t.Logf("RESULT scenario=%s failover_ms=%d unavailable_ms=%d rejoin_ms=%d", scenario,
		r.failover.Milliseconds(), r.unavailable.Milliseconds(), r.rejoin.Milliseconds())
}

// failover runs a writer, injects a failure on the primary (node 0), waits
// for the first write acknowledged by node 1, then for node 0 to rejoin as
// synchronous standby, and verifies the writes.
func failover(t *testing.T, p *Pair, inject func() error) result {
	w := p.StartWriter()
	time.Sleep(1500 * time.Millisecond)
	t0 := time.Now()
	if err := inject(); err != nil {
		t.Fatal(err)
	}
	first, err := w.WaitAck(t0, p.Names[1], 30*time.Second)
	if err != nil {
		w.Stop()
		t.Fatal(err)
	}
	var r result
	r.failover = first.At.Sub(t0)
	if last, ok := w.LastBefore(t0); ok {
		r.unavailable = first.At.Sub(last.At)
	}
	_, _ = p.WaitFor("the old primary rejoins as synchronous standby", 60*time.Second, Healthy(1))
	r.rejoin = time.Since(t0)
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(1, 1)
	return r
}

func TestFailoverPostgresStopped(t *testing.T) {
	p := startHealthy(t)
	r := failover(t, p, func() error { return p.StopPostgres(0) })
	logResult(t, "pg-stopped", r)
}

func TestFailoverPostgresKilled(t *testing.T) {
	p := startHealthy(t)
	r := failover(t, p, func() error { return p.KillPostgres(0) })
	logResult(t, "pg-killed", r)
}

// eventsOf returns node status events containing s.
func eventsOf(s ha.Status, sub string) []ha.Event {
	var out []ha.Event
	for _, e := range s.Events {
		if strings.Contains(e.What, sub) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}
