// Package ha is the agent's state machine: it decides the database role
// before PostgreSQL starts, keeps replication synchronous while the standby is
// healthy, fails over, fences and rejoins. Everything outside the decision
// logic is reached through the narrow interfaces in this file, so the machine
// runs in unit tests against a fake clock, database and VIP.
package ha

import (
	"context"
	"errors"
	"time"

	"github.com/edgepair/edgepair/agent/internal/store"
)

// Clock tells the time (a fake one in tests).
type Clock interface{ Now() time.Time }

// Replica is one row of pg_stat_replication.
type Replica struct {
	Name      string // application_name
	State     string // "streaming", "catchup", ...
	SyncState string // "sync", "async", "potential", "quorum"
	FlushLSN  uint64
}

// PGStatus is what the agent learns from the local PostgreSQL in one query.
type PGStatus struct {
	Up bool // connected and answered
	// Stalled: not Up because the check timed out (the server may be
	// alive but slow), as opposed to refused or gone.
	Stalled    bool
	InRecovery bool
	Timeline   uint32
	// LSN: pg_current_wal_lsn() on a primary, last received LSN on a standby.
	LSN       uint64
	ReplayLSN uint64
	Streaming bool      // standby: WAL receiver streaming
	Replicas  []Replica // primary: pg_stat_replication
	SyncNames string    // synchronous_standby_names in effect
}

// ErrPeerUnreachable marks a Database error where the peer's PostgreSQL
// could not be reached, so nothing was changed locally.
var ErrPeerUnreachable = errors.New("peer PostgreSQL unreachable")

// Database is the local PostgreSQL: queries and data-directory lifecycle.
// Lifecycle methods run PostgreSQL's own tools (initdb, pg_basebackup,
// pg_rewind) and the service manager; they may take seconds.
type Database interface {
	HasData() bool
	Status(ctx context.Context) PGStatus
	// Initialize runs initdb (with data checksums), starts the primary and
	// creates the replication role, the k3s role and database and the peer's slot.
	Initialize(ctx context.Context) error
	StartPrimary(ctx context.Context) error
	StartStandby(ctx context.Context) error
	// Stop stops PostgreSQL (fast shutdown); no error if it is not running.
	Stop(ctx context.Context) error
	// Kill stops PostgreSQL at once (immediate shutdown: sessions and
	// walsenders killed, crash recovery at the next start). Used to fence:
	// a fast shutdown waits up to wal_sender_timeout for a lost standby.
	Kill(ctx context.Context) error
	Promote(ctx context.Context) error
	// Checkpoint forces a checkpoint. After a promotion it writes the new
	// timeline into pg_control, which pg_rewind on the old primary reads:
	// without it pg_rewind wrongly finds "no rewind required".
	Checkpoint(ctx context.Context) error
	// SetSyncStandby sets synchronous_standby_names to name ("" = async).
	SetSyncStandby(ctx context.Context, name string) error
	EnsureSlot(ctx context.Context, node string) error
	// Clone copies the peer with pg_basebackup into an empty data directory.
	Clone(ctx context.Context) error
	// Rewind runs pg_rewind against the peer. It returns an error matching
	// ErrPeerUnreachable when it could not connect to the peer at all: the
	// local data is then untouched and the rejoin is retried, not re-cloned.
	Rewind(ctx context.Context) error
	// Reclone moves the data directory aside (kept) and clones afresh.
	Reclone(ctx context.Context) error
	// CheckpointLSN is the latest checkpoint location of a stopped cluster.
	CheckpointLSN(ctx context.Context) (uint64, error)
}

// VIP controls whether this node may hold the virtual IP (keepalived's
// track file) and checks and removes it on the interface (netlink).
type VIP interface {
	SetEligible(ok bool) error
	Held() (bool, error)
	Release() error
}

// Witness reports whether this node currently reaches its witness (gateway).
type Witness interface{ OK() bool }

// VIPEcho reports on ICMP echoes sent to the witness (gateway) from the VIP
// as source. The gateway answers them to the MAC address its neighbour table
// holds for the VIP, so they are answered only while the gateway believes
// this node owns the VIP: when the other node takes the VIP over (gratuitous
// ARP), this node's VIP-sourced echoes go unanswered while its node-sourced
// ones (Witness) still are.
type VIPEcho interface {
	// Echo returns when the last answered echo was sent and how many echoes
	// were sent and left unanswered since (0 while the VIP is not local).
	Echo() (lastOKSent time.Time, failsInRow int)
}

// Probe tells whether PostgreSQL answers through the VIP from this node.
type Probe interface {
	VIPAnswers(ctx context.Context) bool
}

// K3s restarts k3s after a promotion that may have lost transactions.
type K3s interface {
	Restart(ctx context.Context) error
}

// Store persists the durable state.
type Store interface {
	Load() (store.State, error)
	Save(store.State) error
}
