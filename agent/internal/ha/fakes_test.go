package ha

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/edgepair/edgepair/agent/internal/heartbeat"
	"github.com/edgepair/edgepair/agent/internal/pair"
	"github.com/edgepair/edgepair/agent/internal/store"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time      { return c.t }
func (c *fakeClock) Add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock               { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

// fakeDB models one PostgreSQL data directory and server.
type fakeDB struct {
	mu        sync.Mutex
	hasData   bool
	up        bool
	stalled   bool // not up because the check times out (slow, not gone)
	recovery  bool
	lsn       uint64
	syncNames string
	replicas  []Replica
	rewindErr error
	calls     []string
	ckptLSN   uint64
}

func (f *fakeDB) call(s string) { f.calls = append(f.calls, s) }
func (f *fakeDB) HasData() bool { return f.hasData }
func (f *fakeDB) Status(context.Context) PGStatus {
	if !f.up {
		return PGStatus{Stalled: f.stalled}
	}
	return PGStatus{Up: true, InRecovery: f.recovery, LSN: f.lsn, Replicas: f.replicas, SyncNames: f.syncNames, Streaming: f.recovery}
}
func (f *fakeDB) Initialize(context.Context) error {
	f.call("initialize")
	f.hasData, f.up, f.recovery = true, true, false
	return nil
}
func (f *fakeDB) StartPrimary(context.Context) error {
	f.call("startPrimary")
	f.up, f.recovery = true, false
	return nil
}
func (f *fakeDB) StartStandby(context.Context) error {
	f.call("startStandby")
	f.up, f.recovery = true, true
	return nil
}
func (f *fakeDB) Stop(context.Context) error { f.call("stop"); f.up = false; return nil }
func (f *fakeDB) Kill(context.Context) error { f.call("kill"); f.up = false; return nil }
func (f *fakeDB) Promote(context.Context) error {
	f.call("promote")
	f.recovery = false
	return nil
}
func (f *fakeDB) Checkpoint(context.Context) error { f.call("checkpoint"); return nil }
func (f *fakeDB) SetSyncStandby(_ context.Context, name string) error {
	f.call("sync=" + name)
	f.syncNames = name
	return nil
}
func (f *fakeDB) EnsureSlot(context.Context, string) error { return nil }
func (f *fakeDB) Clone(context.Context) error              { f.call("clone"); f.hasData = true; return nil }
func (f *fakeDB) Rewind(context.Context) error             { f.call("rewind"); return f.rewindErr }
func (f *fakeDB) Reclone(context.Context) error            { f.call("reclone"); return nil }
func (f *fakeDB) CheckpointLSN(context.Context) (uint64, error) {
	return f.ckptLSN, nil
}
func (f *fakeDB) has(s string) bool {
	for _, c := range f.calls {
		if c == s {
			return true
		}
	}
	return false
}

type fakeVIP struct {
	eligible, held bool
	released       int
}

func (v *fakeVIP) SetEligible(ok bool) error {
	v.eligible = ok
	if ok {
		v.held = true // keepalived takes the VIP; on false it may leave it behind
	}
	return nil
}
func (v *fakeVIP) Held() (bool, error) { return v.held, nil }
func (v *fakeVIP) Release() error      { v.held = false; v.released++; return nil }

type fakeWitness struct{ ok bool }

func (w *fakeWitness) OK() bool { return w.ok }

// fakeVIPEcho is the witness probe sent from the VIP; pairSim drives it
// from its model of the gateway's neighbour entry for the VIP.
type fakeVIPEcho struct {
	lastOKSent time.Time
	fails      int
}

func (e *fakeVIPEcho) Echo() (time.Time, int) { return e.lastOKSent, e.fails }

type fakeProbe struct {
	answers bool
	fn      func() bool
}

func (p *fakeProbe) VIPAnswers(context.Context) bool {
	if p.fn != nil {
		return p.fn()
	}
	return p.answers
}

type fakeK3s struct{ restarts int }

func (k *fakeK3s) Restart(context.Context) error { k.restarts++; return nil }

type memStore struct {
	s    store.State
	fail bool
}

func (m *memStore) Load() (store.State, error) { return m.s, nil }
func (m *memStore) Save(s store.State) error {
	if m.fail {
		return errors.New("disk full")
	}
	m.s = s
	return nil
}

type rig struct {
	n     *Node
	clock *fakeClock
	db    *fakeDB
	vip   *fakeVIP
	wit   *fakeWitness
	echo  *fakeVIPEcho
	probe *fakeProbe
	k3s   *fakeK3s
	st    *memStore
}

func testLog(t *testing.T) *slog.Logger {
	if os.Getenv("HA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var timeouts = pair.Timeouts{
	Heartbeat: 200 * time.Millisecond, PeerDead: time.Second, FenceAfter: 1500 * time.Millisecond,
	PromoteAfter: 3 * time.Second, DegradeAfter: 6 * time.Second,
}

func newRig(t *testing.T, self, peer string, clock *fakeClock, st store.State) *rig {
	t.Helper()
	r := &rig{clock: clock, db: &fakeDB{}, vip: &fakeVIP{}, wit: &fakeWitness{ok: true}, echo: &fakeVIPEcho{}, probe: &fakeProbe{}, k3s: &fakeK3s{}, st: &memStore{s: st}}
	n, err := New(Config{Self: self, Peer: peer, InitialPrimary: "a", Timeouts: timeouts}, Deps{
		Clock: clock, DB: r.db, VIP: r.vip, Witness: r.wit, VIPEcho: r.echo, Probe: r.probe, K3s: r.k3s, Store: r.st, Log: testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	r.n = n
	return r
}

// pairSim connects two nodes through an in-memory network whose links can be
// cut per direction, and keeps the fake databases' replication consistent.
type pairSim struct {
	t      *testing.T
	clock  *fakeClock
	a, b   *rig
	cutAB  bool // a -> b dropped
	cutBA  bool
	writes int

	// The gateway: its neighbour entry for the VIP points at gwOwner, moved
	// by a node's gratuitous ARP garpDelay after it took the VIP (keepalived's
	// transition). gwNoVIPEcho: the gateway never answers echoes from the VIP.
	gwOwner     *rig
	garpDelay   time.Duration
	gwNoVIPEcho bool
	heldSince   map[*rig]time.Time
	garped      map[*rig]bool
}

func newPair(t *testing.T) *pairSim {
	c := newClock()
	p := &pairSim{t: t, clock: c, a: newRig(t, "a", "b", c, store.State{}), b: newRig(t, "b", "a", c, store.State{}),
		heldSince: map[*rig]time.Time{}, garped: map[*rig]bool{}}
	// The VIP answers from a node when the other one holds it, its database
	// serves, and the link from it to the prober is up.
	p.a.probe.fn = func() bool { return p.b.vip.held && p.b.db.up && !p.cutBA }
	p.b.probe.fn = func() bool { return p.a.vip.held && p.a.db.up && !p.cutAB }
	return p
}

// boot brings the pair from empty disks to primary a + synchronous standby b.
func (p *pairSim) boot() {
	p.t.Helper()
	p.run(8 * time.Second)
	if ra, rb := p.roles(); ra != heartbeat.RolePrimary || rb != heartbeat.RoleStandby {
		p.t.Fatalf("after boot: a=%s b=%s", ra, rb)
	}
	if p.a.db.syncNames != "b" || !p.a.n.standbyOK {
		p.t.Fatalf("after boot: sync=%q standbyOK=%v", p.a.db.syncNames, p.a.n.standbyOK)
	}
}

func (p *pairSim) other(r *rig) *rig {
	if r == p.a {
		return p.b
	}
	return p.a
}

// syncReplication mirrors what PostgreSQL would show: a standby that is up
// and whose peer is a primary it can reach appears in pg_stat_replication.
func (p *pairSim) syncReplication() {
	for _, r := range []*rig{p.a, p.b} {
		o := p.other(r)
		r.db.replicas = nil
		reach := !(r == p.a && p.cutAB) && !(r == p.b && p.cutBA) && !(o == p.a && p.cutAB) && !(o == p.b && p.cutBA)
		if r.db.up && !r.db.recovery && o.db.up && o.db.recovery && reach {
			ss := "async"
			if r.db.syncNames == o.n.cfg.Self {
				ss = "sync"
			}
			o.db.lsn = r.db.lsn
			r.db.replicas = []Replica{{Name: o.n.cfg.Self, State: "streaming", SyncState: ss, FlushLSN: r.db.lsn}}
		}
	}
}

// step advances the clock by one heartbeat: exchange messages, tick both.
func (p *pairSim) step() {
	p.clock.Add(timeouts.Heartbeat)
	p.syncReplication()
	ma, mb := p.a.n.Message(), p.b.n.Message()
	if !p.cutAB {
		p.b.n.OnHeartbeat(ma)
	}
	if !p.cutBA {
		p.a.n.OnHeartbeat(mb)
	}
	ctx := context.Background()
	p.a.n.Tick(ctx)
	p.b.n.Tick(ctx)
	p.gateway()
	p.check()
}

// gateway moves its VIP entry on gratuitous ARP and answers (or not) each
// node's echo from the VIP; both nodes reach it unless their witness is off.
func (p *pairSim) gateway() {
	now := p.clock.Now()
	for _, r := range []*rig{p.a, p.b} {
		if !r.vip.held {
			delete(p.heldSince, r)
			p.garped[r] = false
			r.echo.fails = 0
			continue
		}
		if _, ok := p.heldSince[r]; !ok {
			p.heldSince[r] = now
		}
		if !p.garped[r] && now.Sub(p.heldSince[r]) >= p.garpDelay && r.wit.ok {
			p.garped[r], p.gwOwner = true, r
		}
		if r.wit.ok && p.gwOwner == r && !p.gwNoVIPEcho {
			r.echo.lastOKSent, r.echo.fails = now, 0
		} else {
			r.echo.fails++
		}
	}
}

func (p *pairSim) run(d time.Duration) {
	for end := p.clock.Now().Add(d); p.clock.Now().Before(end); {
		p.step()
	}
}

// acks reports whether r's database would acknowledge a commit now: it is a
// primary and either asynchronous or its synchronous standby is connected
// (otherwise commits wait).
func acks(r *rig) bool {
	if !r.db.up || r.db.recovery {
		return false
	}
	if r.db.syncNames == "" {
		return true
	}
	for _, rep := range r.db.replicas {
		if rep.Name == r.db.syncNames && rep.SyncState == "sync" {
			return true
		}
	}
	return false
}

// check is the safety invariant: two nodes never acknowledge writes at once,
// and at most one holds the VIP unless the nodes cannot reach each other at
// all (in a partition both keepalived instances are MASTER until the old
// primary fences; the gateway's neighbour entry decides who gets traffic).
func (p *pairSim) check() {
	p.t.Helper()
	if acks(p.a) && acks(p.b) {
		p.t.Fatalf("t=%s: both nodes acknowledge writes (a=%s b=%s)", p.clock.Now().Format("15:04:05.000"), p.a.n.role, p.b.n.role)
	}
	if p.a.vip.held && p.b.vip.held && !(p.cutAB && p.cutBA) {
		p.t.Fatalf("both nodes hold the VIP")
	}
}

func (p *pairSim) roles() (heartbeat.Role, heartbeat.Role) { return p.a.n.role, p.b.n.role }
