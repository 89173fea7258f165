package ha

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgepair/edgepair/agent/internal/heartbeat"
	"github.com/edgepair/edgepair/agent/internal/store"
)

func TestFirstBoot(t *testing.T) {
	p := newPair(t)
	p.boot()
	if !p.a.db.has("initialize") || p.b.db.has("initialize") || !p.b.db.has("clone") {
		t.Fatalf("calls a=%v b=%v", p.a.db.calls, p.b.db.calls)
	}
	if p.a.st.s.Term != 1 || p.a.st.s.LastRole != "primary" || p.b.st.s.Term != 1 || p.b.st.s.LastRole != "standby" {
		t.Fatalf("persisted a=%+v b=%+v", p.a.st.s, p.b.st.s)
	}
	if !p.a.vip.held || p.b.vip.held {
		t.Fatalf("VIP a=%v b=%v", p.a.vip.held, p.b.vip.held)
	}
	// running first boot again changes nothing
	calls := len(p.a.db.calls)
	p.run(5 * time.Second)
	if len(p.a.db.calls) != calls {
		t.Fatalf("steady state made calls: %v", p.a.db.calls[calls:])
	}
}

func TestStandbyWaitsWithoutPrimary(t *testing.T) {
	c := newClock()
	r := newRig(t, "b", "a", c, store.State{})
	for i := 0; i < 50; i++ {
		c.Add(200 * time.Millisecond)
		r.n.Tick(context.Background())
	}
	if len(r.db.calls) != 0 || r.n.role != heartbeat.RoleStarting {
		t.Fatalf("non-initial node acted alone: %v role=%s", r.db.calls, r.n.role)
	}
}

func TestNodeGoneFailover(t *testing.T) {
	p := newPair(t)
	p.boot()
	// a loses power: its processes die, nothing more from it
	p.a.db.up = false
	p.a.vip.held = false
	p.cutAB, p.cutBA = true, true
	start := p.clock.Now()
	for p.b.n.role != heartbeat.RolePrimary {
		p.a.n.mu.Lock() // a is dead: do not tick it
		p.a.n.mu.Unlock()
		p.clock.Add(timeouts.Heartbeat)
		p.b.n.Tick(context.Background())
		if p.clock.Now().Sub(start) > 10*time.Second {
			t.Fatal("b never promoted")
		}
	}
	took := p.clock.Now().Sub(start)
	if took < timeouts.PromoteAfter || took > timeouts.PromoteAfter+timeouts.PeerDead {
		t.Fatalf("promoted after %s, want PromoteAfter..+PeerDead", took)
	}
	if p.b.st.s.Term != 2 || !p.b.db.has("promote") || p.b.db.syncNames != "" || !p.b.vip.held {
		t.Fatalf("b after promotion: %+v calls=%v vip=%v", p.b.st.s, p.b.db.calls, p.b.vip.held)
	}
	// pg_rewind on the old primary needs the new timeline in pg_control:
	// the new primary is not "serving" for the peer before its checkpoint.
	if m := p.b.n.Message(); m.Serving || p.b.db.has("checkpoint") {
		t.Fatalf("announced serving before the checkpoint: %+v", m)
	}
	p.clock.Add(timeouts.Heartbeat)
	p.b.n.Tick(context.Background())
	if m := p.b.n.Message(); !m.Serving || !p.b.db.has("checkpoint") {
		t.Fatalf("no checkpoint after promotion: calls=%v serving=%v", p.b.db.calls, m.Serving)
	}
}

func TestStandbyDoesNotPromoteWithoutWitnessOrWhileVIPAnswers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		witness   bool
		vipAnswer bool
	}{{"no witness", false, false}, {"VIP answers", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t)
			p.boot()
			p.b.wit.ok = tc.witness
			p.b.probe.fn = func() bool { return tc.vipAnswer }
			p.a.wit.ok = true // a keeps serving
			p.cutAB, p.cutBA = true, true
			p.run(10 * time.Second)
			if p.b.n.role != heartbeat.RoleStandby || p.b.db.has("promote") {
				t.Fatalf("b promoted: role=%s", p.b.n.role)
			}
		})
	}
}

func TestIsolatedPrimaryFencesBeforeStandbyPromotes(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.a.wit.ok = false // a loses everything
	p.cutAB, p.cutBA = true, true
	var fencedAt, promotedAt time.Time
	for i := 0; i < 60; i++ {
		p.step()
		if fencedAt.IsZero() && p.a.n.role == heartbeat.RoleFenced {
			fencedAt = p.clock.Now()
		}
		if promotedAt.IsZero() && p.b.n.role == heartbeat.RolePrimary {
			promotedAt = p.clock.Now()
		}
	}
	if fencedAt.IsZero() || promotedAt.IsZero() || !fencedAt.Before(promotedAt) {
		t.Fatalf("fenced=%v promoted=%v", fencedAt, promotedAt)
	}
	if p.a.db.up || p.a.vip.held {
		t.Fatal("fenced primary still serving or holding the VIP")
	}
	// heal: a sees the higher term and rejoins with pg_rewind
	p.cutAB, p.cutBA = false, false
	p.a.wit.ok = true
	p.run(3 * time.Second)
	if ra, rb := p.roles(); ra != heartbeat.RoleStandby || rb != heartbeat.RolePrimary {
		t.Fatalf("after heal a=%s b=%s", ra, rb)
	}
	if !p.a.db.has("rewind") || p.a.st.s.Term != 2 {
		t.Fatalf("a calls=%v state=%+v", p.a.db.calls, p.a.st.s)
	}
	p.run(3 * time.Second)
	if p.b.db.syncNames != "a" {
		t.Fatalf("rejoined standby not made synchronous: %q", p.b.db.syncNames)
	}
}

func TestPartitionWithWitnessNoTwoWriters(t *testing.T) {
	p := newPair(t)
	p.boot()
	// The nodes cannot reach each other, both reach the witness, and the
	// standby still reaches PostgreSQL through the VIP (one LAN): the standby
	// must not promote; the primary keeps serving and degrades to async.
	p.cutAB, p.cutBA = true, true
	p.b.probe.fn = func() bool { return p.a.vip.held && p.a.db.up }
	p.run(12 * time.Second) // step() checks: never two writers, never two VIPs
	if ra, rb := p.roles(); ra != heartbeat.RolePrimary || rb != heartbeat.RoleStandby {
		t.Fatalf("a=%s b=%s", ra, rb)
	}
	if p.a.db.syncNames != "" {
		t.Fatal("primary did not degrade after DegradeAfter")
	}
	p.cutAB, p.cutBA = false, false
	p.run(3 * time.Second)
	if p.a.db.syncNames != "b" {
		t.Fatal("synchronous replication not restored after the partition healed")
	}
}

// TestRealPartitionOldPrimaryFences: the nodes cannot exchange any frame
// (the VIP is unreachable from the standby too), both reach the gateway. The
// standby cannot tell this from a dead primary and promotes inside its
// window; its gratuitous ARP moves the gateway's VIP entry, the old primary's
// echoes from the VIP go unanswered while its own are answered, and it fences
// without ever dropping to asynchronous replication: never two writers.
func TestRealPartitionOldPrimaryFences(t *testing.T) {
	for _, garp := range []time.Duration{0, 1500 * time.Millisecond} {
		t.Run("garp after "+garp.String(), func(t *testing.T) {
			p := newPair(t)
			p.garpDelay = garp
			p.boot()
			if s := p.a.n.Status(); s.VIPCheck != VIPCheckOK {
				t.Fatalf("healthy primary: vip_check %q, want %q", s.VIPCheck, VIPCheckOK)
			}
			syncCalls := len(p.a.db.calls)
			p.cutAB, p.cutBA = true, true
			lastOK := p.a.n.lastStandbyOK
			var promoted, fenced time.Time
			for i := 0; i < 75; i++ { // 15 s; step() checks the invariant
				p.step()
				if promoted.IsZero() && p.b.n.role == heartbeat.RolePrimary {
					promoted = p.clock.Now()
				}
				if fenced.IsZero() && p.a.n.role == heartbeat.RoleFenced {
					fenced = p.clock.Now()
				}
			}
			if promoted.IsZero() || fenced.IsZero() {
				t.Fatalf("promoted=%v fenced=%v (a=%s b=%s)", promoted, fenced, p.a.n.role, p.b.n.role)
			}
			for _, c := range p.a.db.calls[syncCalls:] {
				if c == "sync=" {
					t.Fatalf("old primary degraded to async during the partition: %v", p.a.db.calls[syncCalls:])
				}
			}
			if !promoted.Before(lastOK.Add(timeouts.DegradeAfter - timeouts.PeerDead)) {
				t.Fatalf("promoted at +%s, after the window closed", promoted.Sub(lastOK))
			}
			if p.a.db.up || p.a.vip.held || !p.a.db.has("kill") {
				t.Fatalf("fenced old primary: db up %v, VIP %v, calls %v", p.a.db.up, p.a.vip.held, p.a.db.calls)
			}
			t.Logf("promoted +%s, old primary fenced +%s after its last synchronous standby", promoted.Sub(lastOK), fenced.Sub(lastOK))
			// heal: the old primary rejoins as the synchronous standby
			p.cutAB, p.cutBA = false, false
			p.run(6 * time.Second)
			if ra, rb := p.roles(); ra != heartbeat.RoleStandby || rb != heartbeat.RolePrimary || p.b.db.syncNames != "a" || !p.a.db.has("rewind") {
				t.Fatalf("after heal a=%s b=%s sync=%q calls=%v", ra, rb, p.b.db.syncNames, p.a.db.calls)
			}
		})
	}
}

// TestStandbyDeadPrimaryDegradesOnEvidence: the standby is gone (no
// gratuitous ARP ever comes), the gateway keeps answering the primary's
// echoes from the VIP: that is the evidence that the standby did not take
// over, and the primary drops to async once an echo sent after the window
// plus VIPTakeover was answered, and keeps serving.
func TestStandbyDeadPrimaryDegradesOnEvidence(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.cutAB, p.cutBA = true, true
	p.b.wit.ok = false // b is cut off from everything: it never promotes
	lastOK := p.a.n.lastStandbyOK
	var degraded time.Time
	for i := 0; i < 60 && degraded.IsZero(); i++ {
		p.step()
		if p.a.db.syncNames == "" {
			degraded = p.clock.Now()
		}
	}
	earliest := lastOK.Add(timeouts.DegradeAfter - timeouts.PeerDead + VIPTakeover)
	if degraded.IsZero() || !degraded.After(earliest) || degraded.After(earliest.Add(time.Second)) {
		t.Fatalf("degraded at %v, want just after %v", degraded, earliest)
	}
	p.run(5 * time.Second)
	if p.a.n.role != heartbeat.RolePrimary || !acks(p.a) || p.b.db.has("promote") {
		t.Fatalf("a=%s acks=%v b promoted=%v", p.a.n.role, acks(p.a), p.b.db.has("promote"))
	}
}

// TestVIPCheckUnavailable: a gateway that never answers echoes from the VIP
// leaves the check unarmed: a warning, vip_check "unavailable" in /status,
// and the time-only degrade (at DegradeAfter) of earlier releases; no fence
// because of unanswered VIP echoes.
func TestVIPCheckUnavailable(t *testing.T) {
	p := newPair(t)
	p.gwNoVIPEcho = true
	p.boot()
	p.run(vipCalibrateWarn)
	s := p.a.n.Status()
	if s.VIPCheck != VIPCheckUnavailable || len(eventsWith(s, "WARNING: the gateway does not answer")) == 0 {
		t.Fatalf("vip_check %q events %v", s.VIPCheck, s.Events)
	}
	p.cutAB, p.cutBA = true, true
	p.b.wit.ok = false
	lastOK := p.a.n.lastStandbyOK
	var degraded time.Time
	for i := 0; i < 60 && degraded.IsZero(); i++ {
		p.step()
		if p.a.db.syncNames == "" {
			degraded = p.clock.Now()
		}
	}
	if d := degraded.Sub(lastOK); degraded.IsZero() || d < timeouts.DegradeAfter || d > timeouts.DegradeAfter+timeouts.Heartbeat {
		t.Fatalf("degraded %s after the standby was lost, want DegradeAfter", d)
	}
	if p.a.n.role != heartbeat.RolePrimary {
		t.Fatalf("a=%s", p.a.n.role)
	}
}

// TestVIPEchoLossWithPeerHeardDoesNotFence: echoes from the VIP failing while
// the peer is heard is a gateway problem, not a takeover.
func TestVIPEchoLossWithPeerHeardDoesNotFence(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.gwNoVIPEcho = true
	p.run(5 * time.Second)
	if ra, rb := p.roles(); ra != heartbeat.RolePrimary || rb != heartbeat.RoleStandby || p.a.db.syncNames != "b" {
		t.Fatalf("a=%s b=%s sync=%q", ra, rb, p.a.db.syncNames)
	}
}

func eventsWith(s Status, sub string) []Event {
	var out []Event
	for _, e := range s.Events {
		if strings.Contains(e.What, sub) {
			out = append(out, e)
		}
	}
	return out
}

func TestAsymmetricCutRevokesEligibility(t *testing.T) {
	p := newPair(t)
	p.boot()
	// b -> a dropped: a stops hearing b, b still hears a; a announces
	// standbyOK=false after PeerDead, so b loses eligibility and never
	// promotes even once a's heartbeats stop too.
	p.cutBA = true
	p.run(2 * time.Second)
	if p.b.n.eligibleUntil.After(p.clock.Now()) {
		t.Fatalf("b still eligible: until %v now %v", p.b.n.eligibleUntil, p.clock.Now())
	}
	p.cutAB = true
	p.b.probe.fn = func() bool { return false }
	p.run(10 * time.Second)
	if p.b.db.has("promote") {
		t.Fatal("b promoted without eligibility")
	}
	if p.a.db.syncNames != "" {
		t.Fatal("a did not degrade to async after DegradeAfter")
	}
}

func TestPrimaryPGFailureHandsOver(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.a.db.lsn = 500
	p.step()
	p.a.db.up = false // postgres stopped on a
	start := p.clock.Now()
	for p.b.n.role != heartbeat.RolePrimary {
		p.step()
		if p.clock.Now().Sub(start) > 3*time.Second {
			t.Fatalf("no handover: a=%s b=%s", p.a.n.role, p.b.n.role)
		}
	}
	if p.clock.Now().Sub(start) > time.Second {
		t.Fatalf("handover took %s", p.clock.Now().Sub(start))
	}
	p.run(3 * time.Second)
	if ra, rb := p.roles(); ra != heartbeat.RoleStandby || rb != heartbeat.RolePrimary {
		t.Fatalf("a=%s b=%s", ra, rb)
	}
	if !p.a.db.has("rewind") {
		t.Fatalf("a did not rewind: %v", p.a.db.calls)
	}
	if p.b.k3s.restarts != 0 {
		t.Fatal("k3s restarted although nothing could be lost")
	}
}

// TestPrimaryPGStallToleratedThenHandsOver: health checks that time out (a
// slow server, not a refused one) do not hand over at once, as a stopped
// server does, but only once the stall lasts StallTolerance.
func TestPrimaryPGStallToleratedThenHandsOver(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.a.db.lsn = 500
	p.step()
	p.a.db.up, p.a.db.stalled = false, true
	start := p.clock.Now()
	p.run(StallTolerance - time.Second)
	if p.a.n.role != heartbeat.RolePrimary || p.b.db.has("promote") || p.a.db.has("kill") {
		t.Fatalf("handed over on a stall of %s: a=%s b calls=%v", p.clock.Now().Sub(start), p.a.n.role, p.b.db.calls)
	}
	if !p.a.vip.eligible || !p.a.vip.held || p.a.vip.released != 0 {
		t.Fatalf("the VIP was dropped during a stall: eligible=%v held=%v released=%d", p.a.vip.eligible, p.a.vip.held, p.a.vip.released)
	}
	// A stall that ends changes nothing.
	p.a.db.up, p.a.db.stalled = true, false
	p.run(time.Second)
	p.a.db.up, p.a.db.stalled = false, true
	start = p.clock.Now()
	for p.b.n.role != heartbeat.RolePrimary {
		p.step()
		if p.clock.Now().Sub(start) > StallTolerance+3*time.Second {
			t.Fatalf("no handover after a stall of %s: a=%s b=%s", p.clock.Now().Sub(start), p.a.n.role, p.b.n.role)
		}
	}
	if d := p.clock.Now().Sub(start); d < StallTolerance {
		t.Fatalf("handed over after %s, before the stall tolerance %s", d, StallTolerance)
	}
}

func TestPrimaryPGFailureWithoutSyncStandbyRestartsLocally(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.b.db.up = false
	p.b.n.lastPGStart = p.clock.Now() // keep b's PostgreSQL down for a while
	p.run(7 * time.Second)            // a degrades to async
	if p.a.db.syncNames != "" {
		t.Fatal("a did not degrade")
	}
	p.a.db.up = false
	p.run(6 * time.Second)
	if p.a.n.role != heartbeat.RolePrimary || !p.a.db.up || p.b.db.has("promote") {
		t.Fatalf("a=%s up=%v b calls=%v", p.a.n.role, p.a.db.up, p.b.db.calls)
	}
}

func TestRewindFailureReclones(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.a.db.rewindErr = context.DeadlineExceeded
	p.a.db.up = false
	p.run(4 * time.Second)
	if !p.a.db.has("reclone") || p.a.n.role != heartbeat.RoleStandby {
		t.Fatalf("a=%s calls=%v", p.a.n.role, p.a.db.calls)
	}
}

// TestRewindUnreachableRetries: a peer that cannot be reached (busy, still
// booting) is no reason to move the old primary's data aside: the rejoin is
// retried with the data in place.
func TestRewindUnreachableRetries(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.a.db.rewindErr = fmt.Errorf("%w: pg_rewind: connection to server at \"b\" failed: timeout expired", ErrPeerUnreachable)
	p.a.db.up = false
	p.run(4 * time.Second)
	if p.a.db.has("reclone") || p.a.db.has("clone") || p.a.n.role != heartbeat.RoleRejoining || !p.a.db.hasData {
		t.Fatalf("unreachable peer: a=%s hasData=%v calls=%v", p.a.n.role, p.a.db.hasData, p.a.db.calls)
	}
	p.a.db.rewindErr = nil
	p.run(2 * time.Second)
	rewinds := 0
	for _, c := range p.a.db.calls {
		if c == "rewind" {
			rewinds++
		}
	}
	if p.a.n.role != heartbeat.RoleStandby || rewinds < 2 || p.a.db.has("reclone") {
		t.Fatalf("after the peer is reachable: a=%s rewinds=%d calls=%v", p.a.n.role, rewinds, p.a.db.calls)
	}
}

// TestRejoinWithoutDataClones: an old primary whose data directory is gone
// (a re-clone that failed half way removes its copy) clones; it does not try
// to rewind nothing.
func TestRejoinWithoutDataClones(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.a.db.up = false
	p.a.db.hasData = false
	p.run(4 * time.Second)
	if p.a.n.role != heartbeat.RoleStandby || !p.a.db.has("clone") || p.a.db.has("rewind") {
		t.Fatalf("a=%s calls=%v", p.a.n.role, p.a.db.calls)
	}
}

func TestSwitchover(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.a.db.lsn, p.a.db.ckptLSN = 1100, 1000 // the standby streams past the shutdown checkpoint
	p.step()
	if err := p.b.n.RequestSwitchover(); err != nil {
		t.Fatal(err)
	}
	p.run(3 * time.Second)
	if ra, rb := p.roles(); ra != heartbeat.RoleStandby || rb != heartbeat.RolePrimary {
		t.Fatalf("a=%s b=%s", ra, rb)
	}
	p.run(2 * time.Second)
	if p.b.db.syncNames != "a" || p.b.k3s.restarts != 0 || p.a.k3s.restarts != 0 {
		t.Fatalf("after switchover sync=%q k3s restarts %d/%d", p.b.db.syncNames, p.a.k3s.restarts, p.b.k3s.restarts)
	}
}

func TestSwitchoverWaitsForCheckpoint(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.a.db.lsn, p.a.db.ckptLSN = 1000, 5000 // the standby never receives it
	p.step()
	if err := p.a.n.RequestSwitchover(); err != nil {
		t.Fatal(err)
	}
	p.run(4 * time.Second)
	if p.b.db.has("promote") {
		t.Fatal("standby promoted before receiving the shutdown checkpoint")
	}
	// the handover times out and a serves again
	p.run(5 * time.Second)
	if p.a.n.role != heartbeat.RolePrimary || !p.a.db.up {
		t.Fatalf("a=%s up=%v", p.a.n.role, p.a.db.up)
	}
}

func TestBothRestartOldPrimaryWaitsForPeer(t *testing.T) {
	c := newClock()
	r := newRig(t, "a", "b", c, store.State{Term: 3, LastRole: "primary"})
	r.db.hasData = true
	for i := 0; i < 50; i++ {
		c.Add(200 * time.Millisecond)
		r.n.Tick(context.Background())
	}
	if r.db.has("startPrimary") {
		t.Fatal("old primary started read-write without the peer's confirmation")
	}
	r.n.OnHeartbeat(&heartbeat.Message{Node: "b", BootID: "x", Seq: 1, Term: 3, Role: heartbeat.RoleStarting, LastRole: "standby"})
	r.n.Tick(context.Background())
	if !r.db.has("startPrimary") || r.n.role != heartbeat.RolePrimary {
		t.Fatalf("calls=%v role=%s", r.db.calls, r.n.role)
	}
}

func TestRestartWithHigherTermPeer(t *testing.T) {
	c := newClock()
	r := newRig(t, "a", "b", c, store.State{Term: 3, LastRole: "primary"})
	r.db.hasData = true
	r.n.OnHeartbeat(&heartbeat.Message{Node: "b", BootID: "x", Seq: 1, Term: 4, Role: heartbeat.RoleStarting, LastRole: "primary"})
	r.n.Tick(context.Background())
	if r.db.has("startPrimary") {
		t.Fatal("started as primary although the peer was primary in a later term")
	}
	r.n.OnHeartbeat(&heartbeat.Message{Node: "b", BootID: "x", Seq: 2, Term: 4, Role: heartbeat.RolePrimary, Serving: true, LastRole: "primary", K3sEpoch: 1})
	r.n.Tick(context.Background())
	if !r.db.has("rewind") || !r.db.has("startStandby") || r.st.s.Term != 4 {
		t.Fatalf("calls=%v state=%+v", r.db.calls, r.st.s)
	}
	r.n.Tick(context.Background())
	if r.k3s.restarts != 1 || r.st.s.K3sEpoch != 1 {
		t.Fatalf("k3s restarts=%d epoch=%d", r.k3s.restarts, r.st.s.K3sEpoch)
	}
}

func TestVIPRemovedWhenNotPrimary(t *testing.T) {
	c := newClock()
	r := newRig(t, "b", "a", c, store.State{})
	r.vip.held = true // left behind by a keepalived killed with -9
	r.n.Tick(context.Background())
	if r.vip.held || r.vip.released != 1 || r.vip.eligible {
		t.Fatalf("vip %+v", r.vip)
	}
}

func TestPromotionAbortedWhenTermCannotBePersisted(t *testing.T) {
	p := newPair(t)
	p.boot()
	p.b.st.fail = true
	p.a.db.up = false
	p.cutAB, p.cutBA = true, true
	for i := 0; i < 30; i++ {
		p.clock.Add(timeouts.Heartbeat)
		p.b.n.Tick(context.Background())
	}
	if p.b.db.has("promote") {
		t.Fatal("promoted without persisting the new term")
	}
}

func TestLossyPromotionBumpsK3sEpoch(t *testing.T) {
	p := newPair(t)
	p.boot()
	// the primary reports WAL the standby never received (async tail)
	p.b.n.OnHeartbeat(&heartbeat.Message{Node: "a", BootID: "late", Seq: 1, Term: 1, Role: heartbeat.RolePrimary, Serving: true,
		LSN: 9999, SyncOn: true, SyncStandby: "b", StandbyOK: true, DegradeInMs: 6000})
	p.a.db.up = false
	p.cutAB, p.cutBA = true, true
	for i := 0; i < 30 && p.b.n.role != heartbeat.RolePrimary; i++ {
		p.clock.Add(timeouts.Heartbeat)
		p.b.n.Tick(context.Background())
	}
	if p.b.n.role != heartbeat.RolePrimary || p.b.st.s.K3sEpoch != 1 || p.b.k3s.restarts != 1 {
		t.Fatalf("role=%s epoch=%d restarts=%d", p.b.n.role, p.b.st.s.K3sEpoch, p.b.k3s.restarts)
	}
}

func TestRestartedStandbyAgentAdoptsRunningStandby(t *testing.T) {
	c := newClock()
	r := newRig(t, "b", "a", c, store.State{Term: 2, LastRole: "standby"})
	r.db.hasData, r.db.up, r.db.recovery = true, true, true
	r.n.OnHeartbeat(&heartbeat.Message{Node: "a", BootID: "x", Seq: 1, Term: 2, Role: heartbeat.RolePrimary, Serving: true, LastRole: "primary"})
	r.n.Tick(context.Background())
	if r.db.has("stop") || r.db.has("rewind") || !r.db.has("startStandby") || r.n.role != heartbeat.RoleStandby {
		t.Fatalf("calls=%v role=%s", r.db.calls, r.n.role)
	}
}

func TestForcePrimary(t *testing.T) {
	c := newClock()
	r := newRig(t, "a", "b", c, store.State{Term: 3, LastRole: "primary"})
	r.db.hasData = true
	for i := 0; i < 20; i++ {
		c.Add(200 * time.Millisecond)
		r.n.Tick(context.Background())
	}
	if r.n.role != heartbeat.RoleStarting {
		t.Fatalf("role %s", r.n.role)
	}
	if err := r.n.ForcePrimary(); err != nil {
		t.Fatal(err)
	}
	r.n.Tick(context.Background())
	if r.n.role != heartbeat.RolePrimary || r.st.s.Term != 4 || !r.db.has("startPrimary") || r.k3s.restarts != 1 {
		t.Fatalf("role=%s state=%+v calls=%v k3s=%d", r.n.role, r.st.s, r.db.calls, r.k3s.restarts)
	}
	// refused while the peer is heard
	r2 := newRig(t, "a", "b", c, store.State{Term: 3, LastRole: "primary"})
	r2.db.hasData = true
	r2.n.OnHeartbeat(&heartbeat.Message{Node: "b", BootID: "x", Seq: 1, Term: 3, Role: heartbeat.RoleStarting})
	if err := r2.n.ForcePrimary(); err == nil {
		t.Fatal("force-primary accepted while the peer is reachable")
	}
}

func TestRestartedPrimaryAgentAdoptsRunningPrimary(t *testing.T) {
	c := newClock()
	r := newRig(t, "a", "b", c, store.State{Term: 2, LastRole: "primary"})
	r.db.hasData, r.db.up = true, true
	r.vip.held = true
	r.n.Tick(context.Background())
	if r.n.role != heartbeat.RolePrimary || r.vip.released != 0 || !r.vip.held || len(r.db.calls) != 0 {
		t.Fatalf("role=%s vip=%+v calls=%v", r.n.role, r.vip, r.db.calls)
	}
	// a peer that promoted meanwhile still wins
	r.n.OnHeartbeat(&heartbeat.Message{Node: "b", BootID: "x", Seq: 1, Term: 3, Role: heartbeat.RolePrimary, Serving: true})
	r.n.Tick(context.Background())
	if !r.db.has("rewind") || r.n.role != heartbeat.RoleStandby {
		t.Fatalf("role=%s calls=%v", r.n.role, r.db.calls)
	}
}
