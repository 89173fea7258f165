//go:build integration

package nstest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
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

// Scenario tests run in parallel (go test's default -parallel is GOMAXPROCS):
// they mostly wait on timeouts, and every test owns its namespaces, so
// identical addresses in two tests never meet. TestFailoverTimes, which
// measures, runs alone: `-run TestFailoverTimes`.

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
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	r := failover(t, p, func() error { return p.StopPostgres(0) })
	logResult(t, "pg-stopped", r)
}

func TestFailoverPostgresKilled(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
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

func TestPrimaryAgentKilled(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(time.Second)
	t0 := time.Now()
	p.KillAgent(0)
	// PostgreSQL and the VIP stay on node-a: the standby must not promote
	// while PostgreSQL answers through the VIP.
	time.Sleep(8 * time.Second)
	if a, ok := w.FirstAfter(t0.Add(5*time.Second), p.Names[0]); !ok {
		t.Errorf("no write acknowledged by node-a 5 s after its agent died")
	} else {
		t.Logf("writes continue on node-a without its agent (ack at +%s)", a.At.Sub(t0).Round(time.Millisecond))
	}
	if b, err := p.Status(1); err != nil || b.Role != "standby" || b.Term != 1 {
		t.Errorf("node-b after 8 s without node-a's agent: role %s term %d err %v", b.Role, b.Term, err)
	}
	p.StartAgent(0)
	p.WaitFor("node-a's agent adopts the running primary", 30*time.Second, Healthy(0))
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(0, 0)
}

func TestPrimaryNodeGoneAndBack(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(1500 * time.Millisecond)
	t0 := time.Now()
	p.PowerOff(0)
	first, err := w.WaitAck(t0, p.Names[1], 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := result{failover: first.At.Sub(t0)}
	if last, ok := w.LastBefore(t0); ok {
		r.unavailable = first.At.Sub(last.At)
	}
	time.Sleep(2 * time.Second)
	t1 := time.Now()
	p.PowerOn(0)
	a, _ := p.WaitFor("the old primary is back as synchronous standby", 60*time.Second, Healthy(1))
	r.rejoin = time.Since(t1)
	if len(eventsOf(a, "rejoining")) == 0 {
		t.Errorf("node-a became standby without a rejoin event: %+v", a.Events)
	}
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(1, 1)
	logResult(t, "node-gone", r)
}

// TestPartitionWithWitness: a real partition (the nodes exchange no frame,
// both reach the gateway/witness). node-b cannot tell it from a dead primary
// and promotes; its gratuitous ARP moves the gateway's entry for the VIP, so
// node-a's echoes from the VIP go unanswered while its own are answered, and
// node-a fences without ever dropping to asynchronous replication.
func TestPartitionWithWitness(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	p.WaitFor("node-a's VIP ownership check is armed", 10*time.Second, func(a, b ha.Status) bool {
		return a.VIPCheck == ha.VIPCheckOK
	})
	for i := range 2 {
		if out, err := Exec(p.Net.Nodes[i], "cat", "/proc/sys/net/ipv4/conf/eth0/arp_announce"); err != nil || strings.TrimSpace(out) != "2" {
			t.Errorf("%s: arp_announce %q (%v), want 2", p.Names[i], strings.TrimSpace(out), err)
		}
	}
	w := p.StartWriter()
	time.Sleep(1500 * time.Millisecond)
	t0 := time.Now()
	if err := p.Net.Partition(true); err != nil {
		t.Fatal(err)
	}
	first, err := w.WaitAck(t0, p.Names[1], 30*time.Second)
	if err != nil {
		w.Stop()
		t.Fatal(err)
	}
	a, b := p.WaitFor("node-a fenced, node-b primary", 20*time.Second, func(a, b ha.Status) bool {
		return a.Role == "fenced" && b.Role == "primary"
	})
	fenced := eventsOf(a, "another node took it over")
	if len(fenced) == 0 || b.LastFailover.IsZero() {
		t.Fatalf("node-a did not fence on the VIP check (%v) or node-b has no failover", a.Events)
	}
	if d := eventsOf(a, "degraded"); len(d) > 0 {
		t.Fatalf("node-a dropped to asynchronous replication during the partition: %v", d)
	}
	if !b.LastFailover.Before(fenced[0].At) {
		t.Errorf("node-a fenced at %s, before node-b promoted at %s: the VIP check fired without a takeover", fenced[0].At, b.LastFailover)
	}
	last, _ := w.LastBefore(first.At)
	if last.Node == p.Names[1] {
		t.Errorf("last ack before node-b's first is node-b's")
	}
	t.Logf("RESULT scenario=partition promote_ms=%d fence_ms=%d unavailable_ms=%d first_ack_b_ms=%d",
		b.LastFailover.Sub(t0).Milliseconds(), fenced[0].At.Sub(t0).Milliseconds(), first.At.Sub(last.At).Milliseconds(), first.At.Sub(t0).Milliseconds())
	// the fence's immediate shutdown may still be returning
	var a2 ha.Status
	for i := 0; i < 50; i++ {
		if a2, err = p.Status(0); err == nil && !a2.VIPHeld && !a2.PG.Up && p.PostmasterPID(0) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if a2.VIPHeld || a2.PG.Up || p.PostmasterPID(0) != 0 {
		t.Fatalf("fenced node-a still holds the VIP (%v) or runs PostgreSQL (status %v, pid %d)", a2.VIPHeld, a2.PG.Up, p.PostmasterPID(0))
	}
	time.Sleep(2 * time.Second)
	if err := p.Net.Partition(false); err != nil {
		t.Fatal(err)
	}
	p.WaitFor("node-a rejoins as synchronous standby after the partition", 60*time.Second, Healthy(1))
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(1, 1)
}

// TestNodeAddressesFiltered: an asymmetric cut (node addresses filtered
// between the nodes, the VIP reachable from node-b). node-b must not promote
// while PostgreSQL answers through the VIP; node-a keeps the VIP and drops to
// asynchronous replication once its echoes from the VIP, still answered after
// node-b's window plus the takeover allowance, prove node-b did not take over.
func TestNodeAddressesFiltered(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := p.Net.FilterNodeAddrs(true); err != nil {
		t.Fatal(err)
	}
	a, _ := p.WaitFor("node-a degrades to async, node-b stays standby", 20*time.Second, func(a, b ha.Status) bool {
		return a.Role == "primary" && !a.SyncOn && b.Role == "standby"
	})
	if d := eventsOf(a, "degraded"); len(d) > 0 {
		t.Logf("RESULT scenario=node-addrs-filtered degrade_after_ms=%d (node-a's commits wait for the lost standby until then)", d[0].At.Sub(t0).Milliseconds())
	}
	if _, err := w.WaitAck(time.Now(), p.Names[0], 5*time.Second); err != nil {
		t.Fatalf("writes do not continue on node-a after degrading: %v", err)
	}
	time.Sleep(2 * time.Second)
	if b, _ := p.Status(1); b.Term != a.Term || b.Role != "standby" {
		t.Fatalf("node-b promoted while the VIP answered: %s term %d", b.Role, b.Term)
	}
	if err := p.Net.FilterNodeAddrs(false); err != nil {
		t.Fatal(err)
	}
	p.WaitFor("synchronous replication restored after the cut", 30*time.Second, Healthy(0))
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(0, 0)
}

func TestPrimaryIsolated(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := p.Net.SetLinks(0, false); err != nil {
		t.Fatal(err)
	}
	_, err := w.WaitAck(t0, p.Names[1], 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a, b := p.WaitFor("node-a fenced, node-b primary", 20*time.Second, func(a, b ha.Status) bool {
		return a.Role == "fenced" && b.Role == "primary"
	})
	fenced := eventsOf(a, "to=fenced")
	if len(fenced) == 0 || b.LastFailover.IsZero() {
		t.Fatalf("no fence event on node-a (%v) or no failover on node-b", a.Events)
	}
	if !fenced[0].At.Before(b.LastFailover) {
		t.Fatalf("node-a fenced at %s, not before node-b promoted at %s", fenced[0].At, b.LastFailover)
	}
	t.Logf("node-a fenced %s before node-b promoted", b.LastFailover.Sub(fenced[0].At).Round(time.Millisecond))
	for i := 0; i < 30 && p.PostmasterPID(0) != 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if a.VIPHeld || a.PG.Up || p.PostmasterPID(0) != 0 {
		t.Fatalf("fenced node-a still holds the VIP (%v) or runs PostgreSQL (status %v, pid %d)", a.VIPHeld, a.PG.Up, p.PostmasterPID(0))
	}
	if err := p.Net.SetLinks(0, true); err != nil {
		t.Fatal(err)
	}
	p.WaitFor("node-a rejoins as synchronous standby", 60*time.Second, Healthy(1))
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(1, 1)
}

func TestSwitchover(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(time.Second)
	t0 := time.Now()
	out, err := Exec(p.Net.Nodes[1], agentBin, "switchover", "--agent-url", "http://127.0.0.1:7947", "--wait", "60s")
	t.Logf("switchover output:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	p.WaitFor("node-b primary, node-a synchronous standby", 30*time.Second, Healthy(1))
	first, err := w.WaitAck(t0, p.Names[1], 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	last, _ := w.LastBefore(first.At)
	t.Logf("RESULT scenario=switchover unavailable_ms=%d", first.At.Sub(last.At).Milliseconds())
	b, _ := p.Status(1)
	if b.K3sEpoch != 0 {
		t.Errorf("a planned switchover bumped the k3s epoch to %d", b.K3sEpoch)
	}
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(1, 1)
}

func TestBothRestarted(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(1500 * time.Millisecond)
	p.PowerOff(0)
	p.PowerOff(1)
	time.Sleep(time.Second)
	t0 := time.Now()
	p.PowerOn(1) // the standby first: it must wait, not promote
	time.Sleep(3 * time.Second)
	if b, _ := p.Status(1); b.Role == "primary" {
		t.Fatalf("node-b became primary alone after a restart of both")
	}
	p.PowerOn(0)
	p.WaitFor("node-a primary again with node-b synchronous", 60*time.Second, Healthy(0))
	first, err := w.WaitAck(t0, p.Names[0], 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first write %s after the nodes came back", first.At.Sub(t0).Round(time.Millisecond))
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(0, 0)
}

// TestFailoverTimes measures failover for BENCHMARKS.md; it runs only when
// EDGEPAIR_FAILOVER_RUNS is set (e.g. 5), each run on a fresh pair:
//
//	EDGEPAIR_FAILOVER_RUNS=5 go test -tags integration -run TestFailoverTimes -v ./agent/internal/nstest
func TestFailoverTimes(t *testing.T) {
	runs := 0
	if v := os.Getenv("EDGEPAIR_FAILOVER_RUNS"); v != "" {
		if _, err := fmt.Sscan(v, &runs); err != nil || runs < 1 {
			t.Fatalf("EDGEPAIR_FAILOVER_RUNS=%q, want a positive number", v)
		}
	}
	if runs == 0 {
		t.Skip("set EDGEPAIR_FAILOVER_RUNS=N to measure failover times")
	}
	scenarios := []struct {
		name string
		run  func(t *testing.T) result
	}{
		{"pg-stopped", func(t *testing.T) result {
			p := startHealthy(t)
			return failover(t, p, func() error { return p.StopPostgres(0) })
		}},
		{"node-gone", func(t *testing.T) result {
			p := startHealthy(t)
			w := p.StartWriter()
			time.Sleep(1500 * time.Millisecond)
			t0 := time.Now()
			p.PowerOff(0)
			first, err := w.WaitAck(t0, p.Names[1], 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			r := result{failover: first.At.Sub(t0)}
			if last, ok := w.LastBefore(t0); ok {
				r.unavailable = first.At.Sub(last.At)
			}
			t1 := time.Now()
			p.PowerOn(0)
			p.WaitFor("rejoin", 60*time.Second, Healthy(1))
			r.rejoin = time.Since(t1)
			time.Sleep(500 * time.Millisecond)
			w.Stop()
			w.Verify(1, 1)
			return r
		}},
	}
	for _, sc := range scenarios {
		var rs []result
		for i := range runs {
			t.Run(fmt.Sprintf("%s/%d", sc.name, i), func(t *testing.T) {
				r := sc.run(t)
				logResult(t, sc.name, r)
				rs = append(rs, r)
			})
		}
		if len(rs) == 0 {
			continue
		}
		stat := func(get func(result) time.Duration) string {
			var d []time.Duration
			for _, r := range rs {
				d = append(d, get(r))
			}
			sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
			med := d[len(d)/2]
			if len(d)%2 == 0 {
				med = (d[len(d)/2-1] + d[len(d)/2]) / 2
			}
			return fmt.Sprintf("median %.2f s, min %.2f s, max %.2f s", med.Seconds(), d[0].Seconds(), d[len(d)-1].Seconds())
		}
		t.Logf("SUMMARY %s (%d runs): failover %s; write-unavailable %s; rejoin %s", sc.name, len(rs),
			stat(func(r result) time.Duration { return r.failover }),
			stat(func(r result) time.Duration { return r.unavailable }),
			stat(func(r result) time.Duration { return r.rejoin }))
	}
}

func TestStandbyIsolated(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := p.Net.SetLinks(1, false); err != nil {
		t.Fatal(err)
	}
	// node-b reaches neither the peer nor the witness: it must not promote.
	// node-a keeps serving and degrades to async after degradeAfter.
	a, _ := p.WaitFor("node-a degrades to async", 20*time.Second, func(a, b ha.Status) bool {
		return a.Role == "primary" && !a.SyncOn && b.Role == "standby"
	})
	if d := eventsOf(a, "degraded"); len(d) > 0 {
		t.Logf("RESULT scenario=standby-isolated degrade_after_ms=%d", d[0].At.Sub(t0).Milliseconds())
	}
	if _, err := w.WaitAck(time.Now(), p.Names[0], 5*time.Second); err != nil {
		t.Fatalf("writes do not continue on node-a: %v", err)
	}
	time.Sleep(3 * time.Second)
	if b, _ := p.Status(1); b.Role != "standby" || b.Term != 1 || b.WitnessOK {
		t.Fatalf("isolated node-b: role %s term %d witness %v", b.Role, b.Term, b.WitnessOK)
	}
	if err := p.Net.SetLinks(1, true); err != nil {
		t.Fatal(err)
	}
	p.WaitFor("synchronous again after the standby is back", 30*time.Second, Healthy(0))
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(0, 0)
}

// TestKeepalivedKilledThenFailover: keepalived on the primary is killed with
// -9, which leaves the VIP on the interface, and PostgreSQL stops right after:
// the agent must remove the VIP itself (netlink) for node-b to take over, and
// start keepalived again.
func TestKeepalivedKilledThenFailover(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	pids := p.keepalivedPIDs(0)
	if len(pids) == 0 {
		t.Fatal("no keepalived on node-a")
	}
	r := failover(t, p, func() error {
		for _, pid := range pids {
			// the VRRP child may already be gone with its parent
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
				return err
			}
		}
		return p.StopPostgres(0)
	})
	out, err := Exec(p.Net.Nodes[0], "ip", "-4", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, p.Net.VIP().Addr().String()+"/") {
		t.Fatalf("node-a still has the VIP after the failover:\n%s", out)
	}
	a, _ := p.Status(0)
	if len(eventsOf(a, "removing the VIP")) == 0 {
		t.Errorf("node-a's agent did not remove the VIP itself: %v", a.Events)
	}
	// The agent looks for a dead keepalived every 5 s (exec mode; systemd's
	// Restart= does it in a unit): allow two rounds.
	restarted := false
	for deadline := time.Now().Add(11 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if len(p.keepalivedPIDs(0)) > 0 {
			restarted = true
			break
		}
	}
	if !restarted {
		t.Errorf("keepalived was not started again on node-a within 11 s")
	}
	logResult(t, "keepalived-killed-then-pg-stopped", r)
}

// TestAgentsRestartChangeNothing: restarting both agents on a configured,
// healthy pair keeps PostgreSQL running (same postmasters), the roles and
// the term; the status command shows the pair.
func TestAgentsRestartChangeNothing(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	before := [2]int{p.PostmasterPID(0), p.PostmasterPID(1)}
	a0, _ := p.Status(0)
	p.KillAgent(0)
	p.KillAgent(1)
	p.StartAgent(0)
	p.StartAgent(1)
	time.Sleep(2 * time.Second)
	a, _ := p.WaitFor("healthy again after restarting both agents", 30*time.Second, Healthy(0))
	if after := [2]int{p.PostmasterPID(0), p.PostmasterPID(1)}; after != before {
		t.Errorf("PostgreSQL was restarted: postmasters %v -> %v", before, after)
	}
	if a.Term != a0.Term {
		t.Errorf("term changed %d -> %d", a0.Term, a.Term)
	}
	if ev := eventsOf(a, "removing the VIP"); len(ev) > 0 {
		t.Errorf("the restarted primary agent dropped the VIP: %v", ev)
	}
	out, err := Exec(p.Net.Nodes[1], agentBin, "status", "--agent-url", "http://127.0.0.1:7947")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("edgepair-agent status on node-b:\n%s", out)
	for _, want := range []string{"node-b (self)", "standby", "node-a", "primary", "sync(node-b)"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q", want)
		}
	}
}

// TestRejoinFallsBackToClone: the old primary's WAL is gone while it is
// down, so pg_rewind cannot work; the agent must move the data directory
// aside (kept) and clone afresh, with no operator step.
func TestRejoinFallsBackToClone(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(time.Second)
	t0 := time.Now()
	p.PowerOff(0)
	if _, err := w.WaitAck(t0, p.Names[1], 30*time.Second); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(p.PGData(0), "pg_wal", "0000000*"))
	if len(segs) == 0 {
		t.Fatal("no WAL segments found on node-a")
	}
	for _, s := range segs {
		if err := os.Remove(s); err != nil {
			t.Fatal(err)
		}
	}
	p.PowerOn(0)
	a, _ := p.WaitFor("node-a re-cloned and synchronous standby", 90*time.Second, Healthy(1))
	if len(eventsOf(a, "pg_rewind failed")) == 0 {
		t.Errorf("no rewind failure recorded: %v", a.Events)
	}
	aside, _ := filepath.Glob(p.PGData(0) + ".old-*")
	if len(aside) != 1 {
		t.Errorf("old data directory not kept aside: %v", aside)
	}
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(1, 1)
}

// TestForcePrimaryAfterPeerLost: both nodes lose power, only the old primary
// comes back. It waits (it cannot know the peer did not promote) until the
// operator runs force-primary; the peer, back later, rejoins as standby.
func TestForcePrimaryAfterPeerLost(t *testing.T) {
	t.Parallel() // each test has its own namespaces and directories
	p := startHealthy(t)
	w := p.StartWriter()
	time.Sleep(time.Second)
	p.PowerOff(1)
	p.PowerOff(0)
	p.PowerOn(0)
	time.Sleep(4 * time.Second)
	if a, _ := p.Status(0); a.Role != "starting" || a.PG.Up {
		t.Fatalf("old primary did not wait for its peer: %s (postgres up %v)", a.Role, a.PG.Up)
	}
	if out, err := Exec(p.Net.Nodes[0], agentBin, "force-primary", "--agent-url", "http://127.0.0.1:7947"); err == nil {
		t.Fatalf("force-primary without --yes-i-know succeeded: %s", out)
	}
	t0 := time.Now()
	if out, err := Exec(p.Net.Nodes[0], agentBin, "force-primary", "--yes-i-know", "--agent-url", "http://127.0.0.1:7947"); err != nil {
		t.Fatalf("force-primary: %v\n%s", err, out)
	}
	if _, err := w.WaitAck(t0, p.Names[0], 20*time.Second); err != nil {
		t.Fatal(err)
	}
	p.PowerOn(1)
	a, _ := p.WaitFor("node-b back as synchronous standby", 60*time.Second, Healthy(0))
	if a.Term != 2 {
		t.Errorf("term after force-primary: %d, want 2", a.Term)
	}
	time.Sleep(time.Second)
	w.Stop()
	w.Verify(0, 0)
}
