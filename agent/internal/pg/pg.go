// Package pg is the local PostgreSQL 15 server as the state machine sees it
// (ha.Database): status queries over the local socket with pgx, and the data
// directory lifecycle with PostgreSQL's own tools (initdb, pg_basebackup,
// pg_rewind, pg_controldata) run as the postgres user.
package pg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/edgepair/edgepair/agent/internal/ha"
	"github.com/edgepair/edgepair/agent/internal/pair"
	"github.com/edgepair/edgepair/agent/internal/render"
)

// Service starts and stops the PostgreSQL server process (systemd unit or
// pg_ctl).
type Service interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	Kill(ctx context.Context) error
}

// Names of the roles and database the agent creates.
const (
	ReplicationUser = "replicator"
	K3sUser         = "k3s"
	K3sDB           = "kubernetes"
	identMap        = "edgepair"
)

// Config locates the server and describes the pair.
type Config struct {
	Bin       string // directory with initdb, pg_ctl, ... (/usr/lib/postgresql/15/bin)
	PGData    string
	SocketDir string
	Port      int
	OSUser    string // owner of PGDATA ("postgres")
	Self      string
	Peer      string
	// PeerHost is where replication and pg_rewind connect (link or LAN).
	PeerHost  netip.Addr
	PeerAddrs []netip.Addr   // allowed to replicate from this node
	K3sNets   []netip.Prefix // allowed to use the k3s database
	ReplPass  string
	K3sPass   string
	// StartPermit, if set, is a file that exists only while the agent
	// itself starts PostgreSQL: the service unit asserts it
	// (AssertPathExists), so nobody else can start the server while the
	// agent fences it or rewinds its data directory, when a start would
	// bring an old primary back read-write.
	StartPermit string
}

// Local implements ha.Database.
type Local struct {
	cfg Config
	svc Service
	log *slog.Logger

	mu   sync.Mutex
	conn *pgx.Conn
}

var _ ha.Database = (*Local)(nil)

// New returns the local database.
func New(cfg Config, svc Service, log *slog.Logger) *Local {
	return &Local{cfg: cfg, svc: svc, log: log}
}

// HasData reports whether PGDATA holds a cluster.
func (l *Local) HasData() bool {
	_, err := os.Stat(filepath.Join(l.cfg.PGData, "PG_VERSION"))
	return err == nil
}

func (l *Local) connect(ctx context.Context) (*pgx.Conn, error) {
	if l.conn != nil && !l.conn.IsClosed() {
		return l.conn, nil
	}
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres connect_timeout=2 application_name=edgepair-agent", l.cfg.SocketDir, l.cfg.Port))
	if err != nil {
		return nil, err
	}
	l.conn = c
	return c, nil
}

func (l *Local) drop() {
	if l.conn != nil {
		_ = l.conn.Close(context.Background())
		l.conn = nil
	}
}

func (l *Local) exec(ctx context.Context, sql string, args ...any) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := l.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect to local PostgreSQL: %w", err)
	}
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		if c.IsClosed() || errors.Is(err, context.DeadlineExceeded) {
			l.drop()
		}
		return fmt.Errorf("%s: %w", firstWord(sql), err)
	}
	return nil
}

func firstWord(s string) string {
	if i := strings.IndexAny(s, " \n"); i > 0 {
		return s[:i]
	}
	return s
}

// ParseLSN parses PostgreSQL's X/X notation.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("bad LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("bad LSN %q: %w", s, err)
	}
	return h<<32 | l, nil
}

const statusSQL = `SELECT pg_is_in_recovery(),
  coalesce((SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1), (SELECT timeline_id FROM pg_control_checkpoint())),
  CASE WHEN pg_is_in_recovery()
       THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), '0/0')::text
       ELSE pg_current_wal_lsn()::text END,
  coalesce(pg_last_wal_replay_lsn(), '0/0')::text,
  coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false),
  current_setting('synchronous_standby_names')`

const replicasSQL = `SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''),
  coalesce(flush_lsn, '0/0')::text FROM pg_stat_replication`

// Status queries the server; Up is false when it cannot be reached.
func (l *Local) Status(ctx context.Context) ha.PGStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	var s ha.PGStatus
	c, err := l.connect(ctx)
	if err != nil {
		return ha.PGStatus{Stalled: timedOut(err)}
	}
	var lsn, replay string
	var tli int64
	if err := c.QueryRow(ctx, statusSQL).Scan(&s.InRecovery, &tli, &lsn, &replay, &s.Streaming, &s.SyncNames); err != nil {
		l.drop()
		return ha.PGStatus{Stalled: timedOut(err)}
	}
	s.Timeline = uint32(tli)
	s.LSN, _ = ParseLSN(lsn)
	s.ReplayLSN, _ = ParseLSN(replay)
	rows, err := c.Query(ctx, replicasSQL)
	if err != nil {
		l.drop()
		return ha.PGStatus{Stalled: timedOut(err)}
	}
	for rows.Next() {
		var r ha.Replica
		var flush string
		if err := rows.Scan(&r.Name, &r.State, &r.SyncState, &flush); err != nil {
			rows.Close()
			l.drop()
			return ha.PGStatus{}
		}
		r.FlushLSN, _ = ParseLSN(flush)
		s.Replicas = append(s.Replicas, r)
	}
	if rows.Err() != nil {
		l.drop()
		return ha.PGStatus{}
	}
	s.Up = true
	return s
}

// timedOut: the check ran out of time (the server may be alive but slow),
// as opposed to a refused connection or a server that is gone.
func timedOut(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// runAs runs a PostgreSQL tool as the data directory's owner.
func (l *Local) runAs(ctx context.Context, env []string, name string, args ...string) error {
	bin := filepath.Join(l.cfg.Bin, name)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 && l.cfg.OSUser != "" && l.cfg.OSUser != "root" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", l.cfg.OSUser, "--", bin}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = "/"
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	l.log.Debug("ran", "cmd", name, "args", redact(args), "took", time.Since(start).String(), "err", err)
	if err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(lastLines(out.String(), 8)))
	}
	return nil
}

func redact(args []string) []string {
	r := make([]string, len(args))
	for i, a := range args {
		if strings.Contains(a, "password=") {
			a = "<conninfo with password>"
		}
		r[i] = a
	}
	return r
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// conninfo for replication and pg_rewind against the peer.
func (l *Local) peerConninfo(db string) string {
	s := fmt.Sprintf("host=%s port=%d user=%s password=%s application_name=%s connect_timeout=10",
		l.cfg.PeerHost, l.cfg.Port, ReplicationUser, conninfoQuote(l.cfg.ReplPass), conninfoQuote(l.cfg.Self))
	if db != "" {
		s += " dbname=" + db
	}
	return s
}

func conninfoQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// writeConfig renders postgresql.conf, pg_hba.conf and pg_ident.conf into
// PGDATA and sets standby.signal for the role.
func (l *Local) writeConfig(standby bool) error {
	p := render.Postgres{
		ClusterName: l.cfg.Self, Port: l.cfg.Port, SocketDir: l.cfg.SocketDir,
		HBAFile: filepath.Join(l.cfg.PGData, "pg_hba.conf"), IdentFile: filepath.Join(l.cfg.PGData, "pg_ident.conf"),
	}
	if standby {
		p.PrimaryConninfo = l.peerConninfo("")
		p.PrimarySlot = pair.SlotName(l.cfg.Self)
	}
	conf, err := render.PostgresConf(p)
	if err != nil {
		return err
	}
	hba, err := render.HBAConf(render.HBA{
		PeerAddrs: l.cfg.PeerAddrs, ReplicationUser: ReplicationUser,
		K3sNets: l.cfg.K3sNets, K3sUser: K3sUser, K3sDB: K3sDB, IdentMap: identMap,
	})
	if err != nil {
		return err
	}
	files := map[string][]byte{"postgresql.conf": conf, "pg_hba.conf": hba, "pg_ident.conf": render.IdentConf(identMap)}
	for name, b := range files {
		if err := l.writeOwned(filepath.Join(l.cfg.PGData, name), b); err != nil {
			return err
		}
	}
	sig := filepath.Join(l.cfg.PGData, "standby.signal")
	if standby {
		if err := l.writeOwned(sig, nil); err != nil {
			return err
		}
	} else if err := os.Remove(sig); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove standby.signal: %w", err)
	}
	return nil
}

func (l *Local) writeOwned(path string, b []byte) error {
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return l.chown(path)
}

func (l *Local) chown(path string) error {
	if os.Geteuid() != 0 || l.cfg.OSUser == "" {
		return nil
	}
	u, err := user.Lookup(l.cfg.OSUser)
	if err != nil {
		return fmt.Errorf("look up user %s: %w", l.cfg.OSUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// prepareDir creates an empty PGDATA owned by the OS user (mode 0700).
func (l *Local) prepareDir() error {
	if err := os.MkdirAll(filepath.Dir(l.cfg.PGData), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(l.cfg.PGData), err)
	}
	if err := os.MkdirAll(l.cfg.PGData, 0o700); err != nil {
		return fmt.Errorf("create PGDATA: %w", err)
	}
	if err := os.Chmod(l.cfg.PGData, 0o700); err != nil {
		return err
	}
	return l.chown(l.cfg.PGData)
}

// Initialize creates the cluster on the initial primary. Each step is
// idempotent, so an interrupted first boot can run again.
func (l *Local) Initialize(ctx context.Context) error {
	if !l.HasData() {
		if err := l.prepareDir(); err != nil {
			return err
		}
		if err := l.runAs(ctx, nil, "initdb", "-D", l.cfg.PGData, "--data-checksums", "-U", "postgres",
			"-E", "UTF8", "--no-locale", "--auth-local=peer", "--auth-host=scram-sha-256"); err != nil {
			return err
		}
	}
	if err := l.StartPrimary(ctx); err != nil {
		return err
	}
	stmts := []string{
		fmt.Sprintf(`DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s WITH REPLICATION LOGIN; END IF; END$$`,
			quoteLiteral(ReplicationUser), quoteIdent(ReplicationUser)),
		fmt.Sprintf(`ALTER ROLE %s WITH PASSWORD %s`, quoteIdent(ReplicationUser), quoteLiteral(l.cfg.ReplPass)),
		// pg_rewind with a non-superuser source role (PostgreSQL docs, pg_rewind)
		fmt.Sprintf(`GRANT EXECUTE ON function pg_catalog.pg_ls_dir(text, boolean, boolean) TO %s`, quoteIdent(ReplicationUser)),
		fmt.Sprintf(`GRANT EXECUTE ON function pg_catalog.pg_stat_file(text, boolean) TO %s`, quoteIdent(ReplicationUser)),
		fmt.Sprintf(`GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text) TO %s`, quoteIdent(ReplicationUser)),
		fmt.Sprintf(`GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO %s`, quoteIdent(ReplicationUser)),
		fmt.Sprintf(`DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s WITH LOGIN; END IF; END$$`,
			quoteLiteral(K3sUser), quoteIdent(K3sUser)),
		fmt.Sprintf(`ALTER ROLE %s WITH PASSWORD %s`, quoteIdent(K3sUser), quoteLiteral(l.cfg.K3sPass)),
	}
	for _, s := range stmts {
		if err := l.exec(ctx, s); err != nil {
			return fmt.Errorf("initialise roles: %w", err)
		}
	}
	var exists bool
	if err := l.queryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, []any{K3sDB}, &exists); err != nil {
		return err
	}
	if !exists {
		if err := l.exec(ctx, fmt.Sprintf(`CREATE DATABASE %s OWNER %s`, quoteIdent(K3sDB), quoteIdent(K3sUser))); err != nil {
			return err
		}
	}
	return l.EnsureSlot(ctx, l.cfg.Peer)
}

func (l *Local) queryRow(ctx context.Context, sql string, args []any, dest ...any) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, err := l.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect to local PostgreSQL: %w", err)
	}
	if err := c.QueryRow(ctx, sql, args...).Scan(dest...); err != nil {
		l.drop()
		return fmt.Errorf("%s: %w", firstWord(sql), err)
	}
	return nil
}

// StartPrimary writes the primary configuration and starts the server.
func (l *Local) StartPrimary(ctx context.Context) error {
	if err := l.writeConfig(false); err != nil {
		return err
	}
	return l.start(ctx)
}

// StartStandby writes the standby configuration (standby.signal,
// primary_conninfo to the peer with our slot) and starts the server.
func (l *Local) StartStandby(ctx context.Context) error {
	if err := l.writeConfig(true); err != nil {
		return err
	}
	return l.start(ctx)
}

func (l *Local) start(ctx context.Context) error {
	if l.cfg.StartPermit != "" {
		if err := os.WriteFile(l.cfg.StartPermit, []byte("edgepair-agent is starting PostgreSQL\n"), 0o600); err != nil {
			return fmt.Errorf("start permit: %w", err)
		}
		defer l.ClearStartPermit()
	}
	if err := l.svc.Start(ctx); err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	// wait until it accepts connections (the service may return early)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if l.Status(ctx).Up {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("PostgreSQL did not accept connections within 60s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ClearStartPermit removes the start permit (a stale one after a crash of
// the agent would let anyone start the server).
func (l *Local) ClearStartPermit() {
	if l.cfg.StartPermit == "" {
		return
	}
	if err := os.Remove(l.cfg.StartPermit); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.log.Warn("could not remove the PostgreSQL start permit", "path", l.cfg.StartPermit, "err", err)
	}
}

// Stop stops the server (fast shutdown).
func (l *Local) Stop(ctx context.Context) error {
	l.mu.Lock()
	l.drop()
	l.mu.Unlock()
	if err := l.svc.Stop(ctx); err != nil {
		return fmt.Errorf("stop PostgreSQL: %w", err)
	}
	return nil
}

// Kill stops the server immediately.
func (l *Local) Kill(ctx context.Context) error {
	l.mu.Lock()
	l.drop()
	l.mu.Unlock()
	if err := l.svc.Kill(ctx); err != nil {
		return fmt.Errorf("kill PostgreSQL: %w", err)
	}
	return nil
}

// Promote ends recovery and waits for it (up to 30 s).
func (l *Local) Promote(ctx context.Context) error {
	var ok bool
	if err := l.queryRow(ctx, `SELECT pg_promote(true, 30)`, nil, &ok); err != nil {
		return err
	}
	if !ok {
		return errors.New("pg_promote returned false")
	}
	return nil
}

// Checkpoint runs CHECKPOINT (immediate).
func (l *Local) Checkpoint(ctx context.Context) error { return l.exec(ctx, `CHECKPOINT`) }

// SetSyncStandby sets synchronous_standby_names (ALTER SYSTEM + reload).
func (l *Local) SetSyncStandby(ctx context.Context, name string) error {
	sql := `ALTER SYSTEM RESET synchronous_standby_names`
	if name != "" {
		sql = fmt.Sprintf(`ALTER SYSTEM SET synchronous_standby_names = %s`, quoteLiteral(quoteIdent(name)))
	}
	if err := l.exec(ctx, sql); err != nil {
		return err
	}
	return l.exec(ctx, `SELECT pg_reload_conf()`)
}

// EnsureSlot creates the physical replication slot for node if missing.
func (l *Local) EnsureSlot(ctx context.Context, node string) error {
	return l.exec(ctx, `SELECT pg_create_physical_replication_slot($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, pair.SlotName(node))
}

// Clone copies the peer into an empty PGDATA with pg_basebackup through this
// node's replication slot.
func (l *Local) Clone(ctx context.Context) error {
	if err := os.RemoveAll(l.cfg.PGData); err != nil {
		return fmt.Errorf("clear PGDATA: %w", err)
	}
	if err := l.prepareDir(); err != nil {
		return err
	}
	err := l.runAs(ctx, []string{"PGPASSWORD=" + l.cfg.ReplPass, "PGCONNECT_TIMEOUT=10"}, "pg_basebackup",
		"-h", l.cfg.PeerHost.String(), "-p", strconv.Itoa(l.cfg.Port), "-U", ReplicationUser,
		"-D", l.cfg.PGData, "-X", "stream", "-S", pair.SlotName(l.cfg.Self), "--checkpoint=fast", "--no-password")
	if err != nil {
		_ = os.RemoveAll(l.cfg.PGData) // a half copy is not a cluster
		return err
	}
	return nil
}

// Rewind resynchronises a stopped old primary with the peer (pg_rewind runs
// crash recovery itself when the target was not shut down cleanly).
func (l *Local) Rewind(ctx context.Context) error {
	// pg_rewind's crash recovery starts the server in single-user mode with
	// our configuration: make sure it is ours and not a standby's.
	if err := l.writeConfig(false); err != nil {
		return err
	}
	err := l.runAs(ctx, nil, "pg_rewind", "-D", l.cfg.PGData, "--source-server", l.peerConninfo("postgres"))
	if err != nil && notConnected(err) {
		// libpq failed before pg_rewind read or wrote anything.
		return fmt.Errorf("%w: %w", ha.ErrPeerUnreachable, err)
	}
	return err
}

// notConnected tells whether a PostgreSQL tool failed because libpq could
// not open its connection (refused, timed out, no route), as opposed to
// failing on the data.
func notConnected(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection to server at") && strings.Contains(s, "failed:") ||
		strings.Contains(s, "could not connect to server")
}

// Reclone moves PGDATA aside (kept for inspection) and clones afresh.
func (l *Local) Reclone(ctx context.Context) error {
	aside := fmt.Sprintf("%s.old-%s", l.cfg.PGData, time.Now().UTC().Format("20060102T150405Z"))
	if l.HasData() {
		if err := os.Rename(l.cfg.PGData, aside); err != nil {
			return fmt.Errorf("move PGDATA aside: %w", err)
		}
		l.log.Warn("old data directory kept aside", "path", aside)
	}
	return l.Clone(ctx)
}

// CheckpointLSN reads the latest checkpoint location of the stopped cluster.
func (l *Local) CheckpointLSN(ctx context.Context) (uint64, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(l.cfg.Bin, "pg_controldata"), "-D", l.cfg.PGData).Output()
	if err != nil {
		return 0, fmt.Errorf("pg_controldata: %w", err)
	}
	state, lsn := "", ""
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Database cluster state":
			state = strings.TrimSpace(v)
		case "Latest checkpoint location":
			lsn = strings.TrimSpace(v)
		}
	}
	if state != "shut down" {
		return 0, fmt.Errorf("cluster state %q, want \"shut down\"", state)
	}
	return ParseLSN(lsn)
}
