// Package heartbeat is the authenticated message the two agents exchange over
// UDP on every path between them (LAN and the optional direct link).
//
// Wire format: 4-byte magic "EPH1", JSON body, 32-byte HMAC-SHA256 over magic
// and body with the pair key. A receiver drops anything that fails the MAC,
// comes from itself, or repeats/reorders a sequence number of the same boot.
package heartbeat

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Role is what a node currently is.
type Role string

// Roles and transient states a node announces.
const (
	RoleStarting  Role = "starting"  // deciding its role; PostgreSQL not serving
	RolePrimary   Role = "primary"   // read-write, holds the VIP
	RoleStandby   Role = "standby"   // streaming from the peer
	RoleFenced    Role = "fenced"    // was primary, stopped itself (isolated)
	RoleHandover  Role = "handover"  // was primary, stopped for the peer to promote
	RoleRejoining Role = "rejoining" // rewinding or cloning from the peer
)

// Message is one heartbeat.
type Message struct {
	Node string `json:"node"`
	// Pair is the pair configuration's fingerprint: a peer from another
	// pair (wrong seed) is ignored even if it knows the key.
	Pair   string `json:"pair,omitempty"`
	BootID string `json:"boot"`
	Seq    uint64 `json:"seq"`
	Term   uint64 `json:"term"`
	Role   Role   `json:"role"`
	// LastRole is the database role persisted on disk (primary or standby).
	LastRole string `json:"lastRole,omitempty"`
	// Serving: PostgreSQL is up in the announced role.
	Serving  bool   `json:"serving"`
	Timeline uint32 `json:"timeline"`
	// LSN: current WAL position on a primary, receive position on a standby.
	LSN       uint64 `json:"lsn"`
	ReplayLSN uint64 `json:"replayLsn,omitempty"`
	// Primary only: synchronous replication state.
	SyncOn      bool   `json:"syncOn"`
	SyncStandby string `json:"syncStandby,omitempty"`
	// StandbyOK: the primary sees the standby streaming and caught up now.
	StandbyOK bool `json:"standbyOk"`
	// DegradeInMs: the primary will not drop synchronous replication for at
	// least this long from the moment it sent this message.
	DegradeInMs int64 `json:"degradeInMs"`
	// HandoverLSN: a handover primary's shutdown checkpoint location (0 when
	// PostgreSQL failed rather than being stopped cleanly).
	HandoverLSN     uint64 `json:"handoverLsn,omitempty"`
	HandoverPlanned bool   `json:"handoverPlanned,omitempty"`
	VIPHeld         bool   `json:"vipHeld"`
	// K3sEpoch increases after a promotion that may have lost transactions;
	// every node restarts k3s when it sees a higher epoch.
	K3sEpoch uint64 `json:"k3sEpoch"`
	// SwitchoverReq: a standby asks the primary for a planned switchover.
	SwitchoverReq bool `json:"switchoverReq,omitempty"`
	// LastFailoverUnix is when this node last promoted (0: never).
	LastFailoverUnix int64 `json:"lastFailover,omitempty"`
}

var magic = []byte("EPH1")

// ErrBadMAC means the message was not signed with the pair key.
var ErrBadMAC = errors.New("heartbeat: bad MAC")

// Seal encodes and signs m.
func Seal(key []byte, m *Message) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("heartbeat encode: %w", err)
	}
	b := make([]byte, 0, len(magic)+len(body)+sha256.Size)
	b = append(b, magic...)
	b = append(b, body...)
	mac := hmac.New(sha256.New, key)
	mac.Write(b)
	return mac.Sum(b), nil
}

// Open verifies and decodes a sealed message.
func Open(key, b []byte) (*Message, error) {
	if len(b) < len(magic)+sha256.Size+2 || !bytes.Equal(b[:len(magic)], magic) {
		return nil, fmt.Errorf("heartbeat: not a heartbeat (%d bytes)", len(b))
	}
	data, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	mac := hmac.New(sha256.New, key)
	mac.Write(data)
	if !hmac.Equal(mac.Sum(nil), sum) {
		return nil, ErrBadMAC
	}
	var m Message
	if err := json.Unmarshal(data[len(magic):], &m); err != nil {
		return nil, fmt.Errorf("heartbeat decode: %w", err)
	}
	return &m, nil
}

// Replay filters repeated or reordered messages of one sender.
type Replay struct {
	mu      sync.Mutex
	boot    string
	lastSeq uint64
}

// Accept reports whether m is newer than everything accepted so far. A new
// boot ID resets the sequence (the sender restarted).
func (r *Replay) Accept(m *Message) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m.BootID != r.boot {
		r.boot, r.lastSeq = m.BootID, m.Seq
		return true
	}
	if m.Seq <= r.lastSeq {
		return false
	}
	r.lastSeq = m.Seq
	return true
}

// UDP sends heartbeats to every peer address and receives the peer's.
type UDP struct {
	Key    []byte
	Self   string
	Peer   string
	Pair   string // fingerprint expected in the peer's messages ("" = not checked)
	Peers  []netip.AddrPort
	Log    *slog.Logger
	conn   *net.UDPConn
	replay Replay
	warned map[string]time.Time
}

// mismatchWarnEvery limits the warnings about a mismatched peer (wrong pair
// key, our own node name, another pair) to one per reason in this interval.
const mismatchWarnEvery = 30 * time.Second

// warnMismatch logs at Warn, at most once per reason per mismatchWarnEvery:
// a node fed the wrong seed keeps sending five heartbeats a second.
func (u *UDP) warnMismatch(reason string, args ...any) {
	now := time.Now()
	if u.warned == nil {
		u.warned = map[string]time.Time{}
	}
	if t, ok := u.warned[reason]; ok && now.Sub(t) < mismatchWarnEvery {
		return
	}
	u.warned[reason] = now
	u.Log.Warn(reason, args...)
}

// Listen opens the UDP socket on all addresses of the node at port.
func (u *UDP) Listen(port int) error {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: port})
	if err != nil {
		return fmt.Errorf("heartbeat listen :%d: %w", port, err)
	}
	u.conn = c
	return nil
}

// Close closes the socket.
func (u *UDP) Close() error { return u.conn.Close() }

// Send signs m and sends it on every path; it fails only if all paths fail.
func (u *UDP) Send(m *Message) error {
	b, err := Seal(u.Key, m)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range u.Peers {
		if _, err := u.conn.WriteToUDPAddrPort(b, p); err != nil {
			errs = append(errs, fmt.Errorf("to %s: %w", p, err))
		}
	}
	if len(errs) == len(u.Peers) {
		return errors.Join(errs...)
	}
	return nil
}

// Receive calls fn for every valid message from the peer until ctx ends.
// path is the source address of the datagram.
func (u *UDP) Receive(ctx context.Context, fn func(m *Message, path netip.Addr)) error {
	go func() { <-ctx.Done(); u.conn.Close() }()
	buf := make([]byte, 64*1024)
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("heartbeat receive: %w", err)
		}
		m, err := Open(u.Key, buf[:n])
		if errors.Is(err, ErrBadMAC) {
			u.warnMismatch("ignoring heartbeats signed with another pair key: the two nodes have seeds of different pairs; not forming a pair, nothing is changed", "from", from.String())
			continue
		}
		if err != nil {
			u.Log.Debug("dropped datagram", "from", from.String(), "err", err)
			continue
		}
		if m.Node == u.Self {
			u.warnMismatch("ignoring heartbeats from another node that uses this node's name: both machines have the same node's seed; not forming a pair, nothing is changed", "node", m.Node, "from", from.String())
			continue
		}
		if m.Node != u.Peer {
			u.warnMismatch("ignoring heartbeats from a node that is not the configured peer", "node", m.Node, "peer", u.Peer, "from", from.String())
			continue
		}
		if u.Pair != "" && m.Pair != u.Pair {
			u.warnMismatch("ignoring heartbeat from a different pair configuration (mismatched seeds?)", "node", m.Node, "fingerprint", m.Pair)
			continue
		}
		if !u.replay.Accept(m) {
			continue // the same message on the second path, or a replay
		}
		fn(m, from.Addr())
	}
}

// FormatLSN prints an LSN as PostgreSQL does (X/X).
func FormatLSN(l uint64) string {
	return strconv.FormatUint(l>>32, 16) + "/" + strconv.FormatUint(l&0xffffffff, 16)
}
