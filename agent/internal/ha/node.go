package ha

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/edgepair/edgepair/agent/internal/heartbeat"
	"github.com/edgepair/edgepair/agent/internal/pair"
	"github.com/edgepair/edgepair/agent/internal/store"
)

// Config is what the state machine needs to know about the pair.
type Config struct {
	Self, Peer     string
	InitialPrimary string
	Timeouts       pair.Timeouts
}

// Deps are the machine's edges.
type Deps struct {
	Clock   Clock
	DB      Database
	VIP     VIP
	Witness Witness
	VIPEcho VIPEcho // may be nil: no VIP ownership check (as if the gateway never answered)
	Probe   Probe
	K3s     K3s // may be nil (no k3s on this node)
	Store   Store
	Log     *slog.Logger
}

const (
	lastRolePrimary = "primary"
	lastRoleStandby = "standby"
)

// StallTolerance is how long a primary's PostgreSQL may time out on the
// health check (the server is there but slow: I/O stall, overloaded machine)
// before it counts as failed. A refused or missing server counts at once.
const StallTolerance = 10 * time.Second

// VIP ownership check (see README "The trade-off").
const (
	// VIPTakeover is the allowance for the standby's promotion, keepalived's
	// transition to MASTER and its gratuitous ARP after the standby's
	// promotion window closes: an echo from the VIP answered when sent later
	// than that proves the standby did not take the VIP over.
	VIPTakeover = 2 * time.Second
	// VIPLostAfter unanswered VIP-sourced echoes in a row (about 250 ms
	// apart) while the node-sourced ones are answered and the peer is silent
	// mean another node claims the VIP at the gateway: fence.
	VIPLostAfter = 3
	// vipCalibrateWarn: a primary whose VIP-sourced echoes were never answered
	// this long after taking the role warns that the check is unavailable.
	vipCalibrateWarn = 5 * time.Second
)

// Values of Status.VIPCheck.
const (
	VIPCheckOK          = "ok"          // the gateway answers echoes from the VIP: the check is armed
	VIPCheckUnavailable = "unavailable" // it never did (or no prober): degrade by time alone
	VIPCheckPending     = "pending"     // primary, not answered yet
	VIPCheckIdle        = "idle"        // not primary
)

// Node is one agent's view and decisions. Tick drives it; OnHeartbeat feeds
// it the peer's messages; Message is what it announces.
type Node struct {
	cfg Config
	d   Deps

	mu sync.Mutex
	st store.State

	role     heartbeat.Role
	bootID   string
	seq      uint64
	kick     chan struct{}
	sendKick chan struct{}

	startedAt   time.Time
	roleSince   time.Time
	peer        *heartbeat.Message
	peerAt      time.Time
	pg          PGStatus
	pgDownSince time.Time
	// pgStallSince: a primary's health checks time out since then (see
	// StallTolerance).
	pgStallSince time.Time
	lastPGStart  time.Time

	// primary
	syncOn        bool
	syncStandby   string
	standbyOK     bool
	lastStandbyOK time.Time

	// VIP ownership check: vipCalibrated once an echo from the VIP was
	// answered in this primary role
	vipCalibrated bool
	vipWarned     bool

	// standby: may promote automatically until this time
	eligibleUntil  time.Time
	peerPrimaryLSN uint64

	// handover (planned switchover or failed PostgreSQL)
	handoverPlanned bool
	handoverLSN     uint64

	// needCheckpoint: promoted, the new timeline is not in pg_control yet;
	// the node does not announce itself as serving until it is.
	needCheckpoint bool

	vipHeld       bool
	switchoverReq time.Time
	forceReq      bool
	lastLog       map[string]time.Time
	events        []Event
}

// Event is a notable transition, kept for /status.
type Event struct {
	At   time.Time `json:"at"`
	What string    `json:"what"`
}

// New creates a node in the starting role from the persisted state.
func New(cfg Config, d Deps) (*Node, error) {
	st, err := d.Store.Load()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("boot id: %w", err)
	}
	now := d.Clock.Now()
	return &Node{
		cfg: cfg, d: d, st: st, role: heartbeat.RoleStarting, bootID: hex.EncodeToString(b),
		kick: make(chan struct{}, 1), sendKick: make(chan struct{}, 1), startedAt: now, roleSince: now, lastLog: map[string]time.Time{},
	}, nil
}

// Kicked fires when the node wants a tick or a heartbeat sent right away.
func (n *Node) Kicked() <-chan struct{} { return n.kick }

// SendKick fires when a heartbeat should go out at once (role change).
func (n *Node) SendKick() <-chan struct{} { return n.sendKick }

func (n *Node) wake() {
	for _, c := range []chan struct{}{n.kick, n.sendKick} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// OnHeartbeat2 adapts OnHeartbeat to the transport's callback.
func (n *Node) OnHeartbeat2(m *heartbeat.Message, _ netip.Addr) { n.OnHeartbeat(m) }

// OnHeartbeat records a valid message from the peer.
func (n *Node) OnHeartbeat(m *heartbeat.Message) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.d.Clock.Now()
	prevRole := heartbeat.Role("")
	if n.peer != nil {
		prevRole = n.peer.Role
	}
	n.peer, n.peerAt = m, now
	if (m.Role == heartbeat.RolePrimary && m.Serving) || m.Role == heartbeat.RoleHandover {
		if m.Role == heartbeat.RolePrimary {
			n.peerPrimaryLSN = m.LSN
		}
		if m.SyncOn && m.SyncStandby == n.cfg.Self && m.StandbyOK {
			n.eligibleUntil = now.Add(time.Duration(m.DegradeInMs)*time.Millisecond - n.cfg.Timeouts.PromoteMargin())
		} else {
			n.eligibleUntil = time.Time{}
		}
	}
	if m.Role != prevRole {
		n.wake()
	}
}

// RequestSwitchover asks for a planned switchover (from either node).
func (n *Node) RequestSwitchover() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.role != heartbeat.RolePrimary && n.role != heartbeat.RoleStandby {
		return fmt.Errorf("switchover: this node is %s; need a primary and a standby", n.role)
	}
	if n.peer == nil || n.d.Clock.Now().Sub(n.peerAt) >= n.cfg.Timeouts.PeerDead {
		return fmt.Errorf("switchover: peer %s is not reachable", n.cfg.Peer)
	}
	n.switchoverReq = n.d.Clock.Now()
	n.wake()
	return nil
}

// ForcePrimary is the operator's override for a pair that cannot decide on
// its own (the peer is gone for good and this node waits, fenced or as a
// non-synchronous standby). It is refused while the peer is heard. The
// operator takes responsibility: if the peer is in fact alive and serving,
// this makes two primaries.
func (n *Node) ForcePrimary() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.peerFresh(n.d.Clock.Now()) {
		return fmt.Errorf("force-primary: peer %s is reachable (%s, term %d); use switchover", n.cfg.Peer, n.peer.Role, n.peer.Term)
	}
	switch n.role {
	case heartbeat.RoleStarting, heartbeat.RoleFenced, heartbeat.RoleStandby, heartbeat.RoleHandover:
	default:
		return fmt.Errorf("force-primary: this node is %s", n.role)
	}
	if !n.d.DB.HasData() {
		return fmt.Errorf("force-primary: no data directory on this node")
	}
	n.forceReq = true
	n.wake()
	return nil
}

func (n *Node) forcePrimary(ctx context.Context, now time.Time) {
	n.forceReq = false
	if n.peerFresh(now) {
		n.d.Log.Warn("force-primary dropped: the peer is reachable again")
		return
	}
	wasStandby := n.st.LastRole == lastRoleStandby
	peerTerm := uint64(0)
	if n.peer != nil {
		peerTerm = n.peer.Term
	}
	prev := n.st
	n.st.Term = max(n.st.Term, peerTerm) + 1
	n.st.LastRole = lastRolePrimary
	n.st.LastFailover = now
	n.st.K3sEpoch++ // anything may be missing: restart k3s everywhere
	if n.save() != nil {
		n.st = prev
		return
	}
	n.event(now, "FORCED to primary by the operator", "term", n.st.Term, "was", n.role)
	if wasStandby {
		// keep the timeline history right: start as standby, then promote
		if err := n.unlocked(func() error { return n.d.DB.StartStandby(ctx) }); err != nil {
			n.d.Log.Error("force-primary: start standby failed", "err", err)
			return
		}
		if err := n.unlocked(func() error { return n.d.DB.Promote(ctx) }); err != nil {
			n.d.Log.Error("force-primary: promote failed", "err", err)
		}
		if err := n.d.DB.SetSyncStandby(ctx, ""); err != nil {
			n.d.Log.Error("force-primary: reset synchronous_standby_names", "err", err)
		}
	} else if err := n.unlocked(func() error { return n.d.DB.StartPrimary(ctx) }); err != nil {
		n.d.Log.Error("force-primary: start primary failed", "err", err)
		return
	}
	if err := n.d.DB.EnsureSlot(ctx, n.cfg.Peer); err != nil {
		n.d.Log.Warn("creating the peer's replication slot failed", "err", err)
	}
	n.becomePrimary(n.d.Clock.Now())
	n.needCheckpoint = true
	n.restartK3s(ctx, "forced promotion")
}

// Message is the heartbeat this node sends now.
func (n *Node) Message() *heartbeat.Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seq++
	now := n.d.Clock.Now()
	m := &heartbeat.Message{
		Node: n.cfg.Self, BootID: n.bootID, Seq: n.seq, Term: n.st.Term, Role: n.role, LastRole: n.st.LastRole,
		Timeline: n.pg.Timeline, LSN: n.pg.LSN, ReplayLSN: n.pg.ReplayLSN, VIPHeld: n.vipHeld,
		K3sEpoch: n.st.K3sEpoch,
	}
	if !n.st.LastFailover.IsZero() {
		m.LastFailoverUnix = n.st.LastFailover.Unix()
	}
	switch n.role {
	case heartbeat.RolePrimary:
		m.Serving = n.pg.Up && !n.pg.InRecovery && !n.needCheckpoint
		m.SyncOn, m.SyncStandby, m.StandbyOK = n.syncOn, n.syncStandby, n.standbyOK
		if n.syncOn {
			m.DegradeInMs = max(0, (n.cfg.Timeouts.DegradeAfter - now.Sub(n.lastStandbyOK)).Milliseconds())
		}
	case heartbeat.RoleHandover:
		// Frozen replication state from the last serving moment; DegradeIn is
		// the time until this node may give up the handover and restart.
		m.SyncOn, m.SyncStandby, m.StandbyOK = n.syncOn, n.syncStandby, n.standbyOK
		m.DegradeInMs = max(0, (n.cfg.Timeouts.DegradeAfter - now.Sub(n.roleSince)).Milliseconds())
		m.HandoverLSN, m.HandoverPlanned = n.handoverLSN, n.handoverPlanned
	case heartbeat.RoleStandby:
		m.Serving = n.pg.Up && n.pg.InRecovery
		m.SwitchoverReq = !n.switchoverReq.IsZero()
	}
	return m
}

// Status is a snapshot for /status.
type Status struct {
	Node          string             `json:"node"`
	Role          heartbeat.Role     `json:"role"`
	RoleSince     time.Time          `json:"roleSince"`
	Term          uint64             `json:"term"`
	LastRole      string             `json:"lastRole"`
	PG            PGStatus           `json:"postgres"`
	SyncOn        bool               `json:"syncOn"`
	SyncStandby   string             `json:"syncStandby"`
	StandbyOK     bool               `json:"standbyOk"`
	VIPHeld       bool               `json:"vipHeld"`
	WitnessOK     bool               `json:"witnessOk"`
	VIPCheck      string             `json:"vip_check"`
	EligibleUntil time.Time          `json:"eligibleUntil,omitzero"`
	K3sEpoch      uint64             `json:"k3sEpoch"`
	LastFailover  time.Time          `json:"lastFailover,omitzero"`
	Peer          *heartbeat.Message `json:"peer,omitempty"`
	PeerAgeMs     int64              `json:"peerAgeMs"`
	Events        []Event            `json:"events"`
}

// Status returns a snapshot of the node.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := Status{
		Node: n.cfg.Self, Role: n.role, RoleSince: n.roleSince, Term: n.st.Term, LastRole: n.st.LastRole, PG: n.pg,
		SyncOn: n.syncOn, SyncStandby: n.syncStandby, StandbyOK: n.standbyOK, VIPHeld: n.vipHeld,
		WitnessOK: n.d.Witness.OK(), VIPCheck: n.vipCheck(), EligibleUntil: n.eligibleUntil, K3sEpoch: n.st.K3sEpoch,
		LastFailover: n.st.LastFailover, Events: append([]Event(nil), n.events...), PeerAgeMs: -1,
	}
	if n.peer != nil {
		p := *n.peer
		s.Peer = &p
		s.PeerAgeMs = n.d.Clock.Now().Sub(n.peerAt).Milliseconds()
	}
	return s
}

func (n *Node) vipCheck() string {
	switch {
	case n.role != heartbeat.RolePrimary:
		return VIPCheckIdle
	case n.vipCalibrated:
		return VIPCheckOK
	case n.vipWarned || n.d.VIPEcho == nil:
		return VIPCheckUnavailable
	}
	return VIPCheckPending
}

func (n *Node) vipEcho() (time.Time, int) {
	if n.d.VIPEcho == nil {
		return time.Time{}, 0
	}
	return n.d.VIPEcho.Echo()
}

func (n *Node) event(now time.Time, msg string, args ...any) {
	n.d.Log.Info(msg, args...)
	what := msg
	for i := 0; i+1 < len(args); i += 2 {
		what += fmt.Sprintf(" %v=%v", args[i], args[i+1])
	}
	n.events = append(n.events, Event{At: now, What: what})
	if len(n.events) > 50 {
		n.events = n.events[len(n.events)-50:]
	}
}

// logEvery logs msg at most once per interval for key (waiting states).
func (n *Node) logEvery(now time.Time, key string, every time.Duration, msg string, args ...any) {
	if t, ok := n.lastLog[key]; ok && now.Sub(t) < every {
		return
	}
	n.lastLog[key] = now
	n.d.Log.Info(msg, args...)
}

func (n *Node) setRole(now time.Time, r heartbeat.Role) {
	if n.role != r {
		n.event(now, "role change", "from", n.role, "to", r, "term", n.st.Term)
		n.role, n.roleSince = r, now
		n.wake()
	}
}

func (n *Node) save() error {
	if err := n.d.Store.Save(n.st); err != nil {
		n.d.Log.Error("persisting state failed", "err", err)
		return err
	}
	return nil
}

// unlocked runs a slow operation without holding the lock, so heartbeats and
// /status keep flowing while PostgreSQL starts, stops or rewinds.
func (n *Node) unlocked(f func() error) error {
	n.mu.Unlock()
	defer n.mu.Lock()
	return f()
}

func (n *Node) peerFresh(now time.Time) bool {
	return n.peer != nil && now.Sub(n.peerAt) < n.cfg.Timeouts.PeerDead
}

// peerSilentFor is how long the peer has not been heard, counting from the
// time this node took its role if it was never heard.
func (n *Node) peerSilentFor(now time.Time) time.Duration {
	base := n.roleSince
	if n.peer != nil && n.peerAt.After(base) {
		base = n.peerAt
	}
	return now.Sub(base)
}

// Run ticks until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	t := time.NewTicker(n.cfg.Timeouts.Heartbeat)
	defer t.Stop()
	for {
		n.Tick(ctx)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-n.kick:
		}
	}
}

// Tick makes one round of observations and decisions.
func (n *Node) Tick(ctx context.Context) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.d.Clock.Now()
	fresh := n.peerFresh(now)
	if !n.switchoverReq.IsZero() && now.Sub(n.switchoverReq) > 30*time.Second {
		n.d.Log.Warn("switchover request expired")
		n.switchoverReq = time.Time{}
	}

	// A primary with a higher term exists: anything that is or was primary
	// here steps down and rejoins as its standby.
	if fresh && n.peer.Role == heartbeat.RolePrimary && n.peer.Serving && n.peer.Term > n.st.Term {
		switch n.role {
		case heartbeat.RolePrimary, heartbeat.RoleFenced, heartbeat.RoleHandover, heartbeat.RoleRejoining:
			n.rejoin(ctx, now)
			n.enforceVIP(now)
			return
		case heartbeat.RoleStarting:
			if n.d.DB.HasData() {
				n.rejoin(ctx, now)
				n.enforceVIP(now)
				return
			}
		}
	}

	if n.forceReq {
		n.forcePrimary(ctx, now)
		n.enforceVIP(now)
		return
	}

	switch n.role {
	case heartbeat.RoleStarting:
		n.tickStarting(ctx, now, fresh)
	case heartbeat.RolePrimary:
		n.tickPrimary(ctx, now, fresh)
	case heartbeat.RoleStandby:
		n.tickStandby(ctx, now, fresh)
	case heartbeat.RoleFenced:
		n.tickFenced(ctx, now, fresh)
	case heartbeat.RoleHandover:
		n.tickHandover(ctx, now, fresh)
	case heartbeat.RoleRejoining:
		if fresh && n.peer.Role == heartbeat.RolePrimary && n.peer.Serving {
			n.rejoin(ctx, now)
		}
	}
	n.followK3sEpoch(ctx, now, fresh)
	n.enforceVIP(now)
}

// tickStarting decides the role before PostgreSQL runs.
func (n *Node) tickStarting(ctx context.Context, now time.Time, fresh bool) {
	listening := now.Sub(n.startedAt) < 2*n.cfg.Timeouts.PeerDead
	peerPrimary := fresh && n.peer.Role == heartbeat.RolePrimary && n.peer.Serving
	if !n.d.DB.HasData() {
		if peerPrimary {
			n.clone(ctx, now)
			return
		}
		if n.cfg.Self != n.cfg.InitialPrimary {
			n.logEvery(now, "wait-clone", 5*time.Second, "first boot: waiting for the primary to clone from", "peer", n.cfg.Peer)
			return
		}
		if listening && !fresh {
			return
		}
		if fresh && (n.peer.LastRole == lastRolePrimary || n.peer.Term > 0) {
			n.logEvery(now, "wait-init", 5*time.Second, "first boot: the peer already has a cluster; waiting for it to serve", "peer_role", n.peer.Role, "peer_term", n.peer.Term)
			return
		}
		n.initialize(ctx, now)
		return
	}
	// The agent restarted while PostgreSQL kept running as primary: adopt it
	// (it was serving all along; nothing changes by keeping it). A peer in a
	// higher term makes it rejoin on the next tick like any primary.
	if n.st.LastRole == lastRolePrimary && !(peerPrimary && n.peer.Term > n.st.Term) {
		if s := n.unlockedStatus(ctx); s.Up && !s.InRecovery {
			n.pg = s
			n.event(now, "adopting the running primary (agent restart)", "term", n.st.Term)
			n.becomePrimary(n.d.Clock.Now())
			return
		}
	}
	if !fresh {
		if !listening {
			n.logEvery(now, "wait-peer", 5*time.Second, "waiting for the peer before starting PostgreSQL (an old primary never starts read-write unconfirmed)", "last_role", n.st.LastRole, "term", n.st.Term)
		}
		return
	}
	if peerPrimary {
		if n.peer.Term >= n.st.Term {
			if n.st.LastRole == lastRoleStandby {
				// Was a standby: nothing to rewind. Start it as standby
				// (a running standby is adopted, not restarted).
				n.event(now, "starting as standby of the serving primary", "peer_term", n.peer.Term)
				n.finishRejoin(ctx)
				return
			}
			n.rejoin(ctx, now)
		} else {
			n.logEvery(now, "stale-peer", 5*time.Second, "peer serves as primary with a lower term; waiting for it to step down", "peer_term", n.peer.Term, "term", n.st.Term)
		}
		return
	}
	// The peer is not serving. The node that was primary last, in the highest
	// term, starts as primary; the other waits for it.
	peerWasPrimary := n.peer.LastRole == lastRolePrimary
	iWasPrimary := n.st.LastRole == lastRolePrimary
	switch {
	case iWasPrimary && (!peerWasPrimary || n.st.Term > n.peer.Term ||
		(n.st.Term == n.peer.Term && n.cfg.Self == n.cfg.InitialPrimary)) && n.st.Term >= n.peer.Term:
		n.startPrimary(ctx, now, "peer confirms it is not primary")
	default:
		n.logEvery(now, "wait-primary", 5*time.Second, "waiting for the peer to start as primary", "peer_role", n.peer.Role, "peer_term", n.peer.Term, "peer_last_role", n.peer.LastRole)
	}
}

func (n *Node) initialize(ctx context.Context, now time.Time) {
	n.event(now, "first boot: initialising the cluster as primary (initdb with data checksums)")
	n.st.Term, n.st.LastRole = 1, lastRolePrimary
	if n.save() != nil {
		return
	}
	if err := n.unlocked(func() error { return n.d.DB.Initialize(ctx) }); err != nil {
		n.d.Log.Error("initialise failed", "err", err)
		return
	}
	n.becomePrimary(now)
}

func (n *Node) startPrimary(ctx context.Context, now time.Time, why string) {
	n.event(now, "starting PostgreSQL as primary", "why", why, "term", n.st.Term)
	n.lastPGStart = now
	if err := n.unlocked(func() error { return n.d.DB.StartPrimary(ctx) }); err != nil {
		n.d.Log.Error("start primary failed", "err", err)
		return
	}
	n.becomePrimary(n.d.Clock.Now())
}

func (n *Node) becomePrimary(now time.Time) {
	n.lastStandbyOK = now
	n.vipCalibrated, n.vipWarned = false, false
	n.pgDownSince = time.Time{}
	n.eligibleUntil = time.Time{}
	n.setRole(now, heartbeat.RolePrimary)
}

func (n *Node) clone(ctx context.Context, now time.Time) {
	n.event(now, "first boot: cloning from the primary (pg_basebackup)", "peer", n.cfg.Peer)
	n.setRole(now, heartbeat.RoleRejoining)
	if err := n.unlocked(func() error { return n.d.DB.Clone(ctx) }); err != nil {
		n.d.Log.Error("clone failed", "err", err)
		n.setRole(now, heartbeat.RoleStarting)
		return
	}
	n.finishRejoin(ctx)
}

// rejoin turns this node into the standby of the peer: stop, rewind if this
// node was primary (falling back to a fresh clone), start as standby.
func (n *Node) rejoin(ctx context.Context, now time.Time) {
	n.event(now, "rejoining as standby", "peer_term", n.peer.Term, "term", n.st.Term, "last_role", n.st.LastRole)
	n.setRole(now, heartbeat.RoleRejoining)
	n.enforceVIP(now)
	if err := n.unlocked(func() error { return n.d.DB.Stop(ctx) }); err != nil {
		n.d.Log.Error("stop before rejoin failed", "err", err)
		return
	}
	n.pg = PGStatus{}
	switch {
	case !n.d.DB.HasData():
		// An earlier re-clone failed half way (its copy is removed): clone.
		n.event(n.d.Clock.Now(), "no data directory: cloning from the primary (pg_basebackup)", "peer", n.cfg.Peer)
		if err := n.unlocked(func() error { return n.d.DB.Clone(ctx) }); err != nil {
			n.d.Log.Error("clone failed", "err", err)
			return
		}
	case n.st.LastRole == lastRolePrimary:
		err := n.unlocked(func() error { return n.d.DB.Rewind(ctx) })
		if errors.Is(err, ErrPeerUnreachable) {
			// Nothing was changed: keep the data and try again next tick
			// (a busy or still-booting peer is not a reason to re-clone).
			n.logEvery(n.d.Clock.Now(), "rewind-unreachable", 5*time.Second, "pg_rewind could not reach the primary; retrying", "err", err)
			return
		}
		if err != nil {
			n.event(n.d.Clock.Now(), "pg_rewind failed; re-cloning (old data directory kept aside)", "err", err)
			if err := n.unlocked(func() error { return n.d.DB.Reclone(ctx) }); err != nil {
				n.d.Log.Error("re-clone failed", "err", err)
				return
			}
		}
	}
	n.finishRejoin(ctx)
}

func (n *Node) finishRejoin(ctx context.Context) {
	if err := n.unlocked(func() error { return n.d.DB.StartStandby(ctx) }); err != nil {
		n.d.Log.Error("start standby failed", "err", err)
		return
	}
	now := n.d.Clock.Now()
	if n.peer != nil {
		n.st.Term = max(n.st.Term, n.peer.Term)
	}
	n.st.LastRole = lastRoleStandby
	if n.save() != nil {
		return
	}
	n.syncOn, n.syncStandby, n.standbyOK = false, "", false
	n.eligibleUntil = time.Time{}
	n.pgDownSince = time.Time{}
	n.lastPGStart = now
	n.setRole(now, heartbeat.RoleStandby)
}

func (n *Node) tickPrimary(ctx context.Context, now time.Time, fresh bool) {
	s := n.unlockedStatus(ctx)
	now = n.d.Clock.Now()
	if !s.Up && s.Stalled && n.pg.Up {
		// Slow is not failed: the last check answered and this one only
		// timed out. Keep the last answer (role, VIP) for StallTolerance: a
		// handover would stop a server that still commits, dropping the VIP
		// would turn slowness into an outage, and a loaded machine would flap.
		if n.pgStallSince.IsZero() {
			n.pgStallSince = now
		}
		if now.Sub(n.pgStallSince) < StallTolerance {
			n.logEvery(now, "pg-stalled", 2*time.Second, "PostgreSQL does not answer the health check in time; not failing over yet",
				"for", now.Sub(n.pgStallSince).String(), "tolerance", StallTolerance.String())
			return
		}
	}
	n.pg = s
	if !s.Up {
		if n.pgDownSince.IsZero() {
			n.pgDownSince = now
			return // confirm on the next tick
		}
		n.primaryDown(ctx, now, fresh)
		return
	}
	n.pgDownSince, n.pgStallSince = time.Time{}, time.Time{}
	if s.InRecovery {
		// Promotion did not finish (or was interrupted): finish it.
		n.logEvery(now, "promote-again", 2*time.Second, "primary role but PostgreSQL is in recovery; promoting")
		if err := n.unlocked(func() error { return n.d.DB.Promote(ctx) }); err != nil {
			n.d.Log.Error("promote failed", "err", err)
		}
		return
	}

	var rep *Replica
	for i := range s.Replicas {
		if s.Replicas[i].Name == n.cfg.Peer {
			rep = &s.Replicas[i]
		}
	}
	n.standbyOK = fresh && rep != nil && rep.State == "streaming" && (rep.SyncState == "sync" || rep.FlushLSN >= s.LSN)
	if n.standbyOK {
		n.lastStandbyOK = now
	}
	n.syncOn = s.SyncNames != ""
	n.syncStandby = ""
	if rep != nil && rep.SyncState == "sync" {
		n.syncStandby = rep.Name
	}
	// VIP ownership through the gateway. Calibrate: echoes from the VIP are
	// answered at all (sent after this node became primary).
	vipOKSent, vipFails := n.vipEcho()
	if !n.vipCalibrated && vipOKSent.After(n.roleSince) {
		n.vipCalibrated = true
		n.event(now, "VIP ownership check armed: the gateway answers echoes sent from the VIP")
	}
	if !n.vipCalibrated && !n.vipWarned && now.Sub(n.roleSince) >= vipCalibrateWarn && n.vipHeld {
		n.vipWarned = true
		n.event(now, "WARNING: the gateway does not answer echoes sent from the VIP: the VIP ownership check is unavailable and a partition between the nodes can leave two writers (see README)")
	}
	// Another node claims the VIP: the peer is silent, the witness answers
	// this node's own address but no longer the VIP. The standby promoted.
	if !fresh && n.vipCalibrated && n.vipHeld && vipFails >= VIPLostAfter && n.d.Witness.OK() {
		n.fence(ctx, now, "the gateway no longer answers the VIP here (another node took it over)")
		return
	}

	want := n.syncOn
	if n.standbyOK && !n.syncOn {
		want = true
	}
	if n.syncOn && !n.standbyOK && now.Sub(n.lastStandbyOK) >= n.cfg.Timeouts.DegradeAfter {
		want = n.vipCalibrated && !n.standbyDidNotTakeOver(now, vipOKSent)
	}
	if want != n.syncOn {
		name := ""
		if want {
			name = n.cfg.Peer
		}
		if err := n.d.DB.SetSyncStandby(ctx, name); err != nil {
			n.d.Log.Error("setting synchronous_standby_names failed", "err", err)
		} else {
			if want {
				n.event(now, "synchronous replication on", "standby", n.cfg.Peer)
			} else {
				n.event(now, "standby gone: degraded to asynchronous replication", "standby_lost_for", now.Sub(n.lastStandbyOK).String())
			}
			n.syncOn = want
		}
	}

	if n.needCheckpoint {
		if err := n.unlocked(func() error { return n.d.DB.Checkpoint(ctx) }); err != nil {
			n.d.Log.Warn("checkpoint after promotion failed", "err", err)
		} else {
			n.needCheckpoint = false
			n.wake()
		}
	}

	// Self-fence: no peer and no witness means this node may be the isolated
	// one; the standby may promote after PromoteAfter, so stop before that.
	if !fresh && n.peerSilentFor(now) >= n.cfg.Timeouts.FenceAfter && !n.d.Witness.OK() {
		n.fence(ctx, now, "no peer and no witness")
		return
	}

	req := !n.switchoverReq.IsZero() || (fresh && n.peer.SwitchoverReq)
	if req {
		if n.standbyOK && n.syncOn && n.syncStandby == n.cfg.Peer {
			n.switchover(ctx, now)
			return
		}
		n.logEvery(now, "switchover-wait", 2*time.Second, "switchover requested; waiting for the standby to be synchronous and caught up")
	}
}

func (n *Node) unlockedStatus(ctx context.Context) PGStatus {
	var s PGStatus
	_ = n.unlocked(func() error {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		s = n.d.DB.Status(c)
		return nil
	})
	return s
}

// primaryDown: PostgreSQL on the primary failed. Hand over to a synchronous,
// caught-up standby; otherwise restart it here.
func (n *Node) primaryDown(ctx context.Context, now time.Time, fresh bool) {
	if fresh && n.peer.Role == heartbeat.RoleStandby && n.peer.Serving && n.syncOn && n.standbyOK {
		n.event(now, "PostgreSQL failed on the primary: handing over to the synchronous standby", "down_for", now.Sub(n.pgDownSince).String())
		n.handoverPlanned, n.handoverLSN = false, 0
		n.setRole(now, heartbeat.RoleHandover)
		n.enforceVIP(now)
		if err := n.unlocked(func() error { return n.d.DB.Kill(ctx) }); err != nil {
			n.d.Log.Warn("stopping failed PostgreSQL", "err", err)
		} else {
			n.pg = PGStatus{}
		}
		return
	}
	if now.Sub(n.lastPGStart) < 5*time.Second {
		return
	}
	n.event(now, "PostgreSQL failed on the primary and no synchronous standby can take over: restarting it")
	n.lastPGStart = now
	n.enforceVIP(now)
	if err := n.unlocked(func() error { return n.d.DB.StartPrimary(ctx) }); err != nil {
		n.d.Log.Error("restart primary failed", "err", err)
	}
}

// standbyDidNotTakeOver: evidence, for a primary that lost its synchronous
// standby, that the standby did not promote. Its promotion window closed at
// lastStandbyOK + DegradeAfter - PromoteMargin at the latest. Evidence is a
// heartbeat received after that from a peer that is not primary in a later
// term, or an echo from the VIP answered by the gateway although sent more
// than VIPTakeover after it (a promoted standby's gratuitous ARP would have
// moved the gateway's entry for the VIP by then).
func (n *Node) standbyDidNotTakeOver(now time.Time, vipOKSent time.Time) bool {
	windowClosed := n.lastStandbyOK.Add(n.cfg.Timeouts.DegradeAfter - n.cfg.Timeouts.PromoteMargin())
	if n.peer != nil && n.peerAt.After(windowClosed) && n.peer.Term <= n.st.Term && n.peer.Role != heartbeat.RolePrimary {
		return true
	}
	if vipOKSent.After(windowClosed.Add(VIPTakeover)) {
		return true
	}
	n.logEvery(now, "degrade-wait", 2*time.Second, "standby lost but no evidence yet that it did not take over the VIP: commits keep waiting (synchronous)",
		"standby_lost_for", now.Sub(n.lastStandbyOK).String())
	return false
}

func (n *Node) fence(ctx context.Context, now time.Time, why string) {
	n.event(now, "fencing: dropping the VIP and stopping PostgreSQL", "why", why, "peer_silent_for", n.peerSilentFor(now).String())
	n.setRole(now, heartbeat.RoleFenced)
	n.enforceVIP(now)
	if err := n.unlocked(func() error { return n.d.DB.Kill(ctx) }); err != nil {
		n.d.Log.Error("fence: stopping PostgreSQL failed", "err", err)
	} else {
		n.pg = PGStatus{}
	}
}

func (n *Node) switchover(ctx context.Context, now time.Time) {
	n.event(now, "planned switchover: stopping the primary cleanly for the standby", "standby", n.cfg.Peer)
	n.switchoverReq = time.Time{}
	n.handoverPlanned, n.handoverLSN = true, 0
	n.setRole(now, heartbeat.RoleHandover)
	n.enforceVIP(now)
	if err := n.unlocked(func() error { return n.d.DB.Stop(ctx) }); err != nil {
		n.d.Log.Error("switchover: stop failed", "err", err)
		return
	}
	n.pg = PGStatus{}
	var lsn uint64
	err := n.unlocked(func() (err error) { lsn, err = n.d.DB.CheckpointLSN(ctx); return err })
	if err != nil {
		n.d.Log.Error("switchover: reading the shutdown checkpoint failed", "err", err)
		return
	}
	n.handoverLSN = lsn
	n.event(n.d.Clock.Now(), "switchover: primary stopped", "shutdown_checkpoint", heartbeat.FormatLSN(lsn))
}

func (n *Node) tickFenced(ctx context.Context, now time.Time, fresh bool) {
	if !fresh {
		n.logEvery(now, "fenced", 5*time.Second, "fenced: waiting for the peer", "peer_silent_for", n.peerSilentFor(now).String())
		return
	}
	if n.peer.Term <= n.st.Term && n.peer.Role != heartbeat.RolePrimary {
		n.startPrimary(ctx, now, "peer is back and did not promote")
	}
}

func (n *Node) tickHandover(ctx context.Context, now time.Time, fresh bool) {
	if n.handoverPlanned && n.handoverLSN == 0 {
		// the stop or checkpoint read failed: try again
		if err := n.unlocked(func() error { return n.d.DB.Stop(ctx) }); err == nil {
			if lsn, err := n.d.DB.CheckpointLSN(ctx); err == nil {
				n.handoverLSN = lsn
			}
		}
	}
	if now.Sub(n.roleSince) < n.cfg.Timeouts.DegradeAfter {
		return
	}
	// The standby's promotion window has closed without a promotion.
	if fresh && n.peer.Term <= n.st.Term && n.peer.Role != heartbeat.RolePrimary {
		n.event(now, "handover not taken by the standby: starting as primary again")
		n.startPrimary(ctx, now, "handover timed out")
		return
	}
	if !fresh {
		n.event(now, "handover: peer silent, it may have promoted; fencing until it is heard")
		n.setRole(now, heartbeat.RoleFenced)
	}
}

func (n *Node) tickStandby(ctx context.Context, now time.Time, fresh bool) {
	s := n.unlockedStatus(ctx)
	now = n.d.Clock.Now()
	n.pg = s
	if !s.Up {
		if n.pgDownSince.IsZero() {
			n.pgDownSince = now
		}
		if now.Sub(n.lastPGStart) > 10*time.Second {
			n.event(now, "standby PostgreSQL is down: starting it")
			n.lastPGStart = now
			if err := n.unlocked(func() error { return n.d.DB.StartStandby(ctx) }); err != nil {
				n.d.Log.Error("start standby failed", "err", err)
			}
		}
		return
	}
	n.pgDownSince = time.Time{}
	if fresh && n.peer.Role == heartbeat.RolePrimary && n.peer.Term > n.st.Term {
		n.st.Term = n.peer.Term
		_ = n.save()
	}
	if fresh && n.peer.Role == heartbeat.RoleHandover {
		n.switchoverReq = time.Time{}
		switch {
		case !now.Before(n.eligibleUntil):
			n.logEvery(now, "handover-not-eligible", 2*time.Second, "primary hands over but this standby was not synchronous: not promoting")
		case n.peer.HandoverPlanned && (n.peer.HandoverLSN == 0 || s.LSN <= n.peer.HandoverLSN):
			n.logEvery(now, "handover-wait", time.Second, "switchover: waiting for the primary's shutdown checkpoint", "received", heartbeat.FormatLSN(s.LSN), "checkpoint", heartbeat.FormatLSN(n.peer.HandoverLSN))
		case n.probeVIP(ctx):
			n.logEvery(now, "handover-vip", time.Second, "handover: the VIP still answers; not promoting yet")
		default:
			n.promote(ctx, now, n.peer.HandoverPlanned)
		}
		return
	}
	if fresh {
		return
	}
	silent := n.peerSilentFor(now)
	if silent < n.cfg.Timeouts.PromoteAfter {
		return
	}
	switch {
	case !now.Before(n.eligibleUntil):
		n.logEvery(now, "not-eligible", 5*time.Second, "primary silent but this standby was not synchronous and caught up (or the window closed): not promoting", "silent_for", silent.String())
	case !n.d.Witness.OK():
		n.logEvery(now, "no-witness", 2*time.Second, "primary silent but the witness is unreachable too (this node may be isolated): not promoting")
	case n.probeVIP(ctx):
		n.logEvery(now, "vip-answers", 2*time.Second, "primary silent but PostgreSQL still answers through the VIP: not promoting")
	default:
		n.promote(ctx, n.d.Clock.Now(), false)
	}
}

func (n *Node) probeVIP(ctx context.Context) bool {
	var ok bool
	_ = n.unlocked(func() error { ok = n.d.Probe.VIPAnswers(ctx); return nil })
	return ok
}

// promote makes this standby the primary in a new term. The term is
// persisted before PostgreSQL is promoted.
func (n *Node) promote(ctx context.Context, now time.Time, planned bool) {
	peerTerm := uint64(0)
	if n.peer != nil {
		peerTerm = n.peer.Term
	}
	mayLose := !planned && n.pg.LSN < n.peerPrimaryLSN
	prev := n.st
	n.st.Term = max(n.st.Term, peerTerm) + 1
	n.st.LastRole = lastRolePrimary
	n.st.LastFailover = now
	if mayLose {
		n.st.K3sEpoch++
	}
	if n.save() != nil {
		n.st = prev
		return
	}
	n.event(now, "promoting", "term", n.st.Term, "planned", planned, "received", heartbeat.FormatLSN(n.pg.LSN),
		"primary_last_lsn", heartbeat.FormatLSN(n.peerPrimaryLSN), "may_have_lost_unacknowledged", mayLose)
	if err := n.unlocked(func() error { return n.d.DB.Promote(ctx) }); err != nil {
		n.d.Log.Error("promote failed (will retry as primary)", "err", err)
	}
	if err := n.d.DB.SetSyncStandby(ctx, ""); err != nil {
		n.d.Log.Error("resetting synchronous_standby_names after promotion failed", "err", err)
	}
	if err := n.d.DB.EnsureSlot(ctx, n.cfg.Peer); err != nil {
		n.d.Log.Warn("creating the peer's replication slot failed", "err", err)
	}
	n.syncOn, n.standbyOK, n.syncStandby = false, false, ""
	n.switchoverReq = time.Time{}
	n.pg.InRecovery = false
	n.becomePrimary(n.d.Clock.Now())
	n.needCheckpoint = true
	if mayLose {
		n.restartK3s(ctx, "promotion may have lost unacknowledged transactions")
	}
}

func (n *Node) followK3sEpoch(ctx context.Context, now time.Time, fresh bool) {
	if !fresh || n.peer.K3sEpoch <= n.st.K3sEpoch {
		return
	}
	if n.role != heartbeat.RoleStandby && n.role != heartbeat.RolePrimary {
		return
	}
	n.st.K3sEpoch = n.peer.K3sEpoch
	if n.save() != nil {
		return
	}
	n.restartK3s(ctx, "peer's promotion may have lost transactions")
}

func (n *Node) restartK3s(ctx context.Context, why string) {
	if n.d.K3s == nil {
		return
	}
	n.event(n.d.Clock.Now(), "restarting k3s (kine caches revisions)", "why", why, "epoch", n.st.K3sEpoch)
	if err := n.unlocked(func() error { return n.d.K3s.Restart(ctx) }); err != nil {
		n.d.Log.Error("k3s restart failed", "err", err)
	}
}

// enforceVIP lets keepalived hold the VIP only on a serving primary and
// removes a VIP this node must not hold (keepalived killed with -9 leaves it).
func (n *Node) enforceVIP(now time.Time) {
	eligible := n.role == heartbeat.RolePrimary && n.pg.Up && !n.pg.InRecovery && n.pgDownSince.IsZero()
	if err := n.d.VIP.SetEligible(eligible); err != nil {
		n.logEvery(now, "vip-track", 5*time.Second, "writing the keepalived track file failed", "err", err)
	}
	held, err := n.d.VIP.Held()
	if err != nil {
		n.logEvery(now, "vip-held", 5*time.Second, "checking the VIP failed", "err", err)
	}
	if held && !eligible {
		n.event(now, "removing the VIP: this node must not hold it", "role", n.role)
		if err := n.d.VIP.Release(); err != nil {
			n.d.Log.Error("removing the VIP failed", "err", err)
		} else {
			held = false
		}
	}
	n.vipHeld = held
}
