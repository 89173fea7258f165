package nstest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgepair/edgepair/agent/internal/ha"
	"github.com/edgepair/edgepair/agent/internal/pair"
	"github.com/edgepair/edgepair/agent/pairconfig"
)

// PGBin is where the tests find PostgreSQL 15.
const PGBin = "/usr/lib/postgresql/15/bin"

// Requirements skips the test unless it runs as root with the tools present.
func Requirements(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, raw ICMP, runuser)")
	}
	for _, f := range []string{"/usr/sbin/keepalived", filepath.Join(PGBin, "initdb"), filepath.Join(PGBin, "pg_rewind")} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("needs %s (Debian packages keepalived, postgresql-15)", f)
		}
	}
	for _, b := range []string{"ip", "runuser"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s", b)
		}
	}
	if _, err := user.Lookup("postgres"); err != nil {
		t.Skip("needs the postgres user (package postgresql-15)")
	}
}

// Pair is two agents (real PostgreSQL, keepalived) in a test network.
type Pair struct {
	T     testing.TB
	Net   *Net
	Base  string
	Bin   string // agent binary
	Names [2]string
	Key   []byte

	mu     sync.Mutex
	agents [2]*exec.Cmd
}

func (p *Pair) dir(i int, sub ...string) string {
	return filepath.Join(append([]string{p.Base, p.Names[i]}, sub...)...)
}

// PGData is node i's data directory.
func (p *Pair) PGData(i int) string { return p.dir(i, "pgdata") }

func secret(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// NewPair creates the network and the configuration; StartAgent starts them.
func NewPair(t testing.TB, agentBin string, timeouts pairconfig.Timeouts) *Pair {
	t.Helper()
	n, err := New()
	if err != nil {
		t.Fatal(err)
	}
	base, err := os.MkdirTemp("", n.Prefix+"-")
	if err != nil {
		n.Close()
		t.Fatal(err)
	}
	p := &Pair{T: t, Net: n, Base: base, Bin: agentBin, Names: [2]string{"node-a", "node-b"}}
	t.Cleanup(p.cleanup)
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	pgUser, _ := user.Lookup("postgres")
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	p.Key = key
	cfg := pairconfig.Config{
		Version: pairconfig.Version, Pair: "test", InitialPrimary: p.Names[0],
		VIP:      pairconfig.VIP{Address: n.VIP(), VRRPID: 51},
		Witness:  pairconfig.Witness{Gateway: n.Gateway()},
		Secrets:  pairconfig.Secrets{ReplicationPassword: secret(24), K3sToken: secret(24), PairKey: base64.StdEncoding.EncodeToString(key)},
		Timeouts: timeouts,
	}
	for i := range 2 {
		l := n.Link(i)
		cfg.Nodes[i] = pairconfig.Node{Name: p.Names[i], Address: n.LAN(i), Interface: "eth0", Link: &l, LinkInterface: "eth1"}
	}
	for i := range 2 {
		for _, d := range []string{"", "state", "run", "sock", "log"} {
			if err := os.MkdirAll(p.dir(i, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range []string{"sock", "log"} {
			if err := os.Chown(p.dir(i, d), uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		c := cfg
		c.Self = p.Names[i]
		b, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p.dir(i, "pair.yaml"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := pairconfig.Load(p.dir(i, "pair.yaml")); err != nil {
			t.Fatalf("generated config does not load: %v", err)
		}
	}
	return p
}

// StartAgent starts node i's agent in its namespace (exec services).
func (p *Pair) StartAgent(i int) {
	p.T.Helper()
	logf, err := os.OpenFile(p.dir(i, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.T.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", p.Net.Nodes[i], p.Bin, "run",
		"--config", p.dir(i, "pair.yaml"), "--state-dir", p.dir(i, "state"), "--run-dir", p.dir(i, "run"),
		"--services", "exec", "--pgdata", p.PGData(i), "--pg-socket-dir", p.dir(i, "sock"),
		"--pg-log", p.dir(i, "log", "postgresql.log"), "--keepalived-conf", p.dir(i, "run", "keepalived.conf"),
		"--k3s=false", "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		p.T.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	p.mu.Lock()
	p.agents[i] = cmd
	p.mu.Unlock()
}

// KillAgent kills node i's agent with SIGKILL (its services keep running).
func (p *Pair) KillAgent(i int) {
	p.mu.Lock()
	cmd := p.agents[i]
	p.agents[i] = nil
	p.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		time.Sleep(50 * time.Millisecond)
	}
}

func pidFrom(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// PostmasterPID is node i's running postmaster, or 0.
func (p *Pair) PostmasterPID(i int) int {
	pid := pidFrom(filepath.Join(p.PGData(i), "postmaster.pid"))
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// StopPostgres stops node i's PostgreSQL cleanly (pg_ctl stop -m fast).
func (p *Pair) StopPostgres(i int) error {
	out, err := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(PGBin, "pg_ctl"), "-D", p.PGData(i), "-m", "fast", "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, out)
	}
	return nil
}

// KillPostgres kills node i's postmaster with SIGKILL.
func (p *Pair) KillPostgres(i int) error {
	pid := p.PostmasterPID(i)
	if pid == 0 {
		return fmt.Errorf("no postmaster running on %s", p.Names[i])
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

func (p *Pair) keepalivedPIDs(i int) []int {
	var pids []int
	for _, f := range []string{"keepalived.agent.pid", "keepalived-vrrp.pid", "keepalived.pid"} {
		if pid := pidFrom(p.dir(i, "run", f)); pid > 0 && syscall.Kill(pid, 0) == nil {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); filepath.Base(exe) == "keepalived" {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// PowerOff simulates node i losing power: every process of it killed with
// SIGKILL and its links down.
func (p *Pair) PowerOff(i int) {
	p.KillAgent(i)
	for _, pid := range p.keepalivedPIDs(i) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = p.KillPostgres(i)
	_ = p.Net.SetLinks(i, false)
	// a dead machine's addresses vanish too: keepalived -9 leaves the VIP
	_ = IP("-n", p.Net.Nodes[i], "addr", "del", p.Net.VIP().String(), "dev", "eth0")
}

// PowerOn brings node i's links up and starts its agent (a reboot).
func (p *Pair) PowerOn(i int) {
	p.T.Helper()
	if err := p.Net.SetLinks(i, true); err != nil {
		p.T.Fatal(err)
	}
	p.StartAgent(i)
}

// Status reads node i's /status from inside its namespace.
func (p *Pair) Status(i int) (ha.Status, error) {
	var s ha.Status
	cl := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: Dialer(p.Net.Nodes[i]), DisableKeepAlives: true}}
	resp, err := cl.Get("http://127.0.0.1:7947/status")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

// WaitFor polls both nodes' status until cond holds or timeout passes.
func (p *Pair) WaitFor(what string, timeout time.Duration, cond func(a, b ha.Status) bool) (ha.Status, ha.Status) {
	p.T.Helper()
	deadline := time.Now().Add(timeout)
	var a, b ha.Status
	for time.Now().Before(deadline) {
		a, _ = p.Status(0)
		b, _ = p.Status(1)
		if cond(a, b) {
			return a, b
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.T.Fatalf("timeout after %s waiting for %s: a=%s/term %d b=%s/term %d", timeout, what, a.Role, a.Term, b.Role, b.Term)
	return a, b
}

// Healthy: i primary with synchronous replication to the other, a standby.
func Healthy(i int) func(a, b ha.Status) bool {
	return func(a, b ha.Status) bool {
		s := [2]ha.Status{a, b}
		pr, sb := s[i], s[1-i]
		return pr.Role == "primary" && pr.SyncOn && pr.StandbyOK && pr.VIPHeld && sb.Role == "standby" && sb.PG.Up && !sb.VIPHeld
	}
}

// DSN is the k3s datastore DSN through the VIP (or another host).
func (p *Pair) DSN(host netip.Addr) string {
	return fmt.Sprintf("postgres://k3s:%s@%s:5432/kubernetes?sslmode=disable&connect_timeout=1", pair.K3sDatastorePassword(p.Key), host)
}

// DumpLogs writes the agents' logs to the test log (on failure).
func (p *Pair) DumpLogs() {
	for i := range 2 {
		for _, f := range []string{"agent.log", "run/keepalived.log", "log/postgresql.log"} {
			b, err := os.ReadFile(p.dir(i, f))
			if err != nil {
				continue
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(lines) > 80 {
				lines = lines[len(lines)-80:]
			}
			p.T.Logf("==== %s %s (last %d lines)\n%s", p.Names[i], f, len(lines), strings.Join(lines, "\n"))
		}
	}
}

func (p *Pair) cleanup() {
	if p.T.Failed() || os.Getenv("EDGEPAIR_TEST_LOGS") != "" {
		p.DumpLogs()
	}
	for i := range 2 {
		p.KillAgent(i)
		for _, pid := range p.keepalivedPIDs(i) {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
		if p.PostmasterPID(i) != 0 {
			_ = exec.Command("runuser", "-u", "postgres", "--", filepath.Join(PGBin, "pg_ctl"), "-D", p.PGData(i), "-m", "immediate", "-w", "stop").Run()
		}
		if pid := p.PostmasterPID(i); pid != 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	time.Sleep(200 * time.Millisecond)
	for i := range 2 {
		for _, pid := range p.keepalivedPIDs(i) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	p.Net.Close()
	if os.Getenv("EDGEPAIR_KEEP_TEST_DIR") == "" {
		_ = os.RemoveAll(p.Base)
	} else {
		p.T.Logf("kept %s", p.Base)
	}
}

// Ctx is a context for a scenario step.
func Ctx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
