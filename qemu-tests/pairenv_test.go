//go:build qemu

package qemutests

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/edgepair/edgepair/qemu-tests/harness"
	"github.com/edgepair/edgepair/qemu-tests/netlab"
	"github.com/edgepair/edgepair/qemu-tests/report"
)

// The pair's test network (RFC 2544 range): the bridge is the gateway and witness.
const (
	labGateway = "198.18.10.1/24"
	clientAddr = "198.18.10.250/24"
	vipAddr    = "198.18.10.10"
	statusPort = 7947
	apiPort    = 6443
	pairName   = "qemu-pair"
)

// repoRoot is the repository root (the tests run in qemu-tests/).
func repoRoot(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// node is one VM of the pair.
type node struct {
	name string
	ip   string
	tap  string
	m    *harness.Machine
}

// pairEnv is a booted pair on its own network, with the client namespace.
type pairEnv struct {
	t       *testing.T
	runDir  string
	lab     *netlab.Lab
	client  string // client namespace
	nodes   []*node
	token   string // k3s token (bearer token of the stand-in's admin)
	accel   harness.Accel
	control string // which control plane runs
	log     *slog.Logger
	hc      *http.Client
}

func (e *pairEnv) node(name string) *node {
	for _, n := range e.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

func (e *pairEnv) other(n *node) *node {
	if e.nodes[0] == n {
		return e.nodes[1]
	}
	return e.nodes[0]
}

// preflight skips the test with the reason when something it needs is missing.
func preflight(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the pair test needs root (network namespaces, taps)")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "ip", "bridge"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps)", tool)
		}
	}
	if _, err := harness.FindOVMF(); err != nil {
		t.Skip(err.Error())
	}
}

// pairImage returns the image the pair boots: EDGEPAIR_PAIR_IMAGE, or one built
// from the current tree (agent included) with the control plane into
// .cache/qemu-pair; the builder's base cache makes that a warm build of about a
// minute, and a stale agent is never tested. It says which control plane is inside.
func pairImage(t *testing.T, ctx context.Context) (img, control string) {
	t.Helper()
	root := repoRoot(t)
	if p := os.Getenv("EDGEPAIR_PAIR_IMAGE"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("EDGEPAIR_PAIR_IMAGE: %v", err)
		}
		return p, envOr("EDGEPAIR_PAIR_CONTROL_PLANE", "as built into "+p)
	}
	// A profile with k3s.oci (an image reference pinned by sha256) or
	// k3s.file brings the real k3s; otherwise EDGEPAIR_K3S or the stand-in.
	profile := envOr("EDGEPAIR_PAIR_PROFILE", "profiles/debian-12.yaml")
	args := []string{"build", "--profile", profile}
	if os.Getenv("EDGEPAIR_PAIR_PROFILE") != "" && os.Getenv("EDGEPAIR_K3S") == "" {
		control = "k3s as " + profile + " specifies"
	} else {
		k3s := envOr("EDGEPAIR_K3S", filepath.Join(root, ".cache", "standin", "k3s"))
		control = "k3s from " + k3s
		if strings.Contains(k3s, "standin") {
			control = "edgepair k3s stand-in (kine v0.17.5 + kube-apiserver v1.34.2), not k3s"
		}
		if _, err := os.Stat(k3s); err != nil {
			t.Skipf("no control plane for the image: %s missing (build the stand-in: make standin, set EDGEPAIR_K3S to a k3s binary, or EDGEPAIR_PAIR_PROFILE to a profile with k3s.oci)", k3s)
		}
		args = append(args, "--k3s", k3s)
	}
	out := filepath.Join(root, ".cache", "qemu-pair", "image")
	img = filepath.Join(out, "edgepair-debian-12.qcow2")
	builder := filepath.Join(root, "bin", "builder")
	if _, err := os.Stat(builder); err != nil {
		t.Skipf("image not built and %s missing (make build)", builder)
	}
	cmd := exec.CommandContext(ctx, builder, append(args, "--output", out, "--formats", "qcow2")...)
	cmd.Dir = root
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(out + "-build.log")
	if err == nil {
		cmd.Stdout, cmd.Stderr = logf, logf
		defer logf.Close()
	}
	start := time.Now()
	t.Logf("building the pair image: %s", harness.ShellQuote(cmd.Args))
	if err := cmd.Run(); err != nil {
		t.Fatalf("image build failed (%v); see %s", err, out+"-build.log")
	}
	t.Logf("image built in %s", time.Since(start).Round(time.Second))
	return img, control
}

// sshPublicKey makes a throw-away OpenSSH ed25519 public key for the seed.
func sshPublicKey() (string, error) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	var b []byte
	for _, f := range [][]byte{[]byte("ssh-ed25519"), pub} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return "ssh-ed25519 " + base64.StdEncoding.EncodeToString(b) + " edgepair-qemu-test", nil
}

// writeSeeds writes the pair file and runs `builder seed`; it returns each node's
// seed ISO and the k3s token from the pair record.
func writeSeeds(t *testing.T, ctx context.Context, dir string, nodes []*node) (map[string]string, string) {
	t.Helper()
	root := repoRoot(t)
	builder := filepath.Join(root, "bin", "builder")
	if _, err := os.Stat(builder); err != nil {
		t.Skipf("%s missing (make build): needed for builder seed", builder)
	}
	key, err := sshPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	pair := fmt.Sprintf(`# written by qemu-tests (pair test)
pair: %s
interface: eth0
nodes:
  - name: %s
    address: %s/24
    mac: "%s"
  - name: %s
    address: %s/24
    mac: "%s"
vip: %s
gateway: %s
sshAuthorizedKeys:
  - %s
`, pairName, nodes[0].name, nodes[0].ip, harness.MACFor(nodes[0].name, 0), nodes[1].name, nodes[1].ip,
		harness.MACFor(nodes[1].name, 0), vipAddr, netip.MustParsePrefix(labGateway).Addr(), key)
	pairFile := filepath.Join(dir, "pair.yaml")
	if err := os.WriteFile(pairFile, []byte(pair), 0o600); err != nil {
		t.Fatal(err)
	}
	seedDir := filepath.Join(dir, "seeds")
	cmd := exec.CommandContext(ctx, builder, "seed", "--pair-file", pairFile, "--output", seedDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "No help topic") || strings.Contains(string(out), "flag provided but not defined") {
			t.Skipf("builder seed is not available yet (%s): %s", harness.ShellQuote(cmd.Args), strings.TrimSpace(string(out)))
		}
		t.Fatalf("%s: %v\n%s", harness.ShellQuote(cmd.Args), err, out)
	}
	isos := map[string]string{}
	for _, n := range nodes {
		iso := filepath.Join(seedDir, n.name, "seed.iso")
		if _, err := os.Stat(iso); err != nil {
			t.Fatalf("builder seed wrote no %s: %v", iso, err)
		}
		isos[n.name] = iso
	}
	rec, err := os.ReadFile(filepath.Join(seedDir, "pair.record.yaml"))
	if err != nil {
		t.Fatalf("pair record: %v", err)
	}
	var r struct {
		Secrets struct {
			K3sToken string `yaml:"k3sToken"`
		} `yaml:"secrets"`
	}
	if err := yaml.Unmarshal(rec, &r); err != nil || r.Secrets.K3sToken == "" {
		t.Fatalf("pair record without secrets.k3sToken: %v", err)
	}
	return isos, r.Secrets.K3sToken
}

// newPair sets up network, seeds and the two machines (not started).
func newPair(t *testing.T, ctx context.Context, runDir, img, control string) *pairEnv {
	t.Helper()
	accel, err := harness.DetectAccel()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(runDir, "harness.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	e := &pairEnv{t: t, runDir: runDir, accel: accel, control: control,
		log: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	e.nodes = []*node{{name: "node-a", ip: "198.18.10.11", tap: "tap-a"}, {name: "node-b", ip: "198.18.10.12", tap: "tap-b"}}
	isos, token := writeSeeds(t, ctx, runDir, e.nodes)
	e.token = token

	lab, err := netlab.New(ctx, netip.MustParsePrefix(labGateway))
	if err != nil {
		t.Fatal(err)
	}
	e.lab = lab
	// Registered first, so it runs last: after every machine is stopped.
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Errorf("network cleanup: %v", err)
		}
	})
	if e.client, err = lab.AddNamespace(ctx, "cl", netip.MustParsePrefix(clientAddr)); err != nil {
		t.Fatal(err)
	}
	e.hc = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: netlab.Dialer(e.client), DisableKeepAlives: true}}
	mem := 3072
	if v := os.Getenv("EDGEPAIR_PAIR_MEMORY_MB"); v != "" {
		if _, err := fmt.Sscan(v, &mem); err != nil || mem < 1024 {
			t.Fatalf("EDGEPAIR_PAIR_MEMORY_MB=%q: want MiB per VM, at least 1024", v)
		}
	}
	cpus := 2
	if v := os.Getenv("EDGEPAIR_PAIR_CPUS"); v != "" {
		if _, err := fmt.Sscan(v, &cpus); err != nil || cpus < 1 {
			t.Fatalf("EDGEPAIR_PAIR_CPUS=%q: want a number of vCPUs per VM (1 or more)", v)
		}
	}
	for _, n := range e.nodes {
		if err := lab.AddTap(ctx, n.tap); err != nil {
			t.Fatal(err)
		}
		m, err := harness.New(ctx, harness.Config{
			Name: n.name, Dir: filepath.Join(runDir, n.name), BaseDisk: img, DiskSize: "8G",
			MemoryMB: mem, CPUs: cpus, CDROM: isos[n.name], Accel: accel, NetNS: lab.Switch,
			NICs: []harness.NIC{{Tap: n.tap, MAC: harness.MACFor(n.name, 0)}}, Log: e.log,
		})
		if err != nil {
			t.Fatal(err)
		}
		n.m = m
		t.Cleanup(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if m.Running() {
				// After a power-on the test shell may not be connected yet.
				if err := m.WaitExecReady(sctx); err != nil {
					t.Logf("%s: test shell: %v", n.name, err)
				}
				if _, err := m.JournalExtract(sctx); err != nil {
					t.Logf("%s: journal not saved: %v", n.name, err)
				}
			}
			if err := m.Close(); err != nil {
				t.Errorf("%s: %v", n.name, err)
			}
			if f, err := m.ScanConsole(); err == nil {
				for _, x := range f {
					if x.Warning {
						t.Logf("%s console warning: %s", n.name, x)
					} else {
						t.Errorf("%s console: %s", n.name, x)
					}
				}
			}
		})
	}
	return e
}

// saveJournal keeps n's journal of this boot (volatile: lost at a power-off)
// in its machine folder before a scenario powers it off; best effort.
func (e *pairEnv) saveJournal(ctx context.Context, n *node, name string) {
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := n.m.SaveJournal(sctx, name); err != nil {
		e.t.Logf("%s: journal before the power-off not saved: %v", n.name, err)
	}
}

// agentStatus is the part of the agent's /status the tests read.
type agentStatus struct {
	Node     string `json:"node"`
	Role     string `json:"role"`
	Term     uint64 `json:"term"`
	VIPHeld  bool   `json:"vipHeld"`
	SyncOn   bool   `json:"syncOn"`
	Standby  bool   `json:"standbyOk"`
	K3sEpoch uint64 `json:"k3sEpoch"`
	Postgres struct {
		Up         bool
		InRecovery bool
		Streaming  bool
	} `json:"postgres"`
}

func (e *pairEnv) status(ctx context.Context, ip string) (agentStatus, error) {
	var s agentStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/status", ip, statusPort), nil)
	if err != nil {
		return s, err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return s, err
	}
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("status %s: HTTP %d", ip, resp.StatusCode)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("status %s: %w", ip, err)
	}
	return s, nil
}

// waitFor polls check until it reports done, ctx ends or timeout passes; the error
// carries the last state check described.
func waitFor(ctx context.Context, timeout time.Duration, what string, check func(ctx context.Context) (bool, string)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		ok, state := check(ctx)
		if ok {
			return nil
		}
		last = state
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not reached within %s; last state: %s", what, timeout, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// healthy reports whether the pair has one primary holding the VIP and one
// streaming standby, and returns them.
func (e *pairEnv) healthy(ctx context.Context) (primary, standby *node, state string) {
	var parts []string
	for _, n := range e.nodes {
		s, err := e.status(ctx, n.ip)
		if err != nil {
			parts = append(parts, n.name+": "+err.Error())
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: role=%s term=%d vip=%v pg.up=%v recovery=%v streaming=%v standbyOk=%v",
			n.name, s.Role, s.Term, s.VIPHeld, s.Postgres.Up, s.Postgres.InRecovery, s.Postgres.Streaming, s.Standby))
		switch {
		case s.Role == "primary" && s.VIPHeld && s.Postgres.Up && !s.Postgres.InRecovery && s.Standby:
			primary = n
		case s.Role == "standby" && s.Postgres.Up && s.Postgres.InRecovery && !s.VIPHeld:
			standby = n
		}
	}
	state = strings.Join(parts, "; ")
	if primary == nil || standby == nil {
		return nil, nil, state
	}
	return primary, standby, state
}

func (e *pairEnv) waitHealthy(ctx context.Context, timeout time.Duration) (primary, standby *node, err error) {
	err = waitFor(ctx, timeout, "healthy pair (primary with VIP + streaming standby)", func(ctx context.Context) (bool, string) {
		var st string
		primary, standby, st = e.healthy(ctx)
		return primary != nil, st
	})
	return primary, standby, err
}

// expectPair waits for a healthy pair and fails t unless primary and standby
// are the nodes given.
func (e *pairEnv) expectPair(t *testing.T, ctx context.Context, primary, standby *node, when string) {
	t.Helper()
	p, s, err := e.waitHealthy(ctx, recoverTimeout)
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	if p != primary || s != standby {
		t.Fatalf("%s: primary=%s standby=%s, want %s and %s", when, p.name, s.name, primary.name, standby.name)
	}
}

// vipHolderFromClient asks the agent answering on the VIP which node it is.
func (e *pairEnv) vipHolderFromClient(ctx context.Context) (string, error) {
	s, err := e.status(ctx, vipAddr)
	return s.Node, err
}

// vipInVM tells whether the VIP is configured on an interface of n (ip addr).
func (e *pairEnv) vipInVM(ctx context.Context, n *node) (bool, error) {
	out, err := n.m.ExecOK(ctx, "ip -o -4 addr show")
	if err != nil {
		return false, err
	}
	return strings.Contains(out, " "+vipAddr+"/"), nil
}

// splitBrainWatch tries, every second, to commit a probe row on each node
// directly (its own address, not the VIP) from the client namespace, with k3s's
// datastore credentials. A node acknowledges a probe only if it really accepts
// writes: a standby refuses, a fenced node is down, and a primary whose
// synchronous standby is gone cannot acknowledge (the probe times out and pgx
// cancels it; a server-side statement_timeout would return success). The two
// nodes accepted writes at the same time if one acknowledged a probe after the
// other had taken over (report.Interleavings over the probes in time order).
type splitBrainWatch struct {
	probes report.WriteLog
}

const probeTable = "edgepair_qemu_probes"

func (e *pairEnv) watchSplitBrain(ctx context.Context, w *writer) *splitBrainWatch {
	sb := &splitBrainWatch{}
	var next atomic.Int64
	go func() {
		for ctx.Err() == nil {
			var wg sync.WaitGroup
			for _, n := range e.nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := next.Add(1)
					node, err := probeWrite(ctx, w, n.ip, id)
					if ctx.Err() != nil {
						return
					}
					pw := report.Write{ID: id, At: time.Now(), OK: err == nil, Node: node}
					if err != nil {
						pw.Err = err.Error()
					}
					sb.probes.Add(pw)
				}()
			}
			wg.Wait()
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return sb
}

// probeWrite commits one probe row on the node at ip and returns the node
// (cluster_name) that acknowledged it.
func probeWrite(ctx context.Context, w *writer, ip string, id int64) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := w.connectTo(ctx, ip)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	var node string
	err = c.QueryRow(ctx, `INSERT INTO `+probeTable+` (id, node) VALUES ($1, current_setting('cluster_name')) RETURNING node`, id).Scan(&node)
	return node, err
}

// since returns the probes acknowledged from t on and every moment in them
// when a node acknowledged a write after the other had taken over.
func (sb *splitBrainWatch) since(t time.Time) (acked int, violations []string) {
	var ws []report.Write
	for _, w := range sb.probes.Snapshot() {
		if !w.At.Before(t) {
			ws = append(ws, w)
		}
	}
	sort.SliceStable(ws, func(i, j int) bool { return ws[i].At.Before(ws[j].At) })
	return len(report.Acked(ws)), report.Interleavings(ws, 2*time.Minute)
}

// k3sEndpoint reads the datastore endpoint the agent wrote for k3s on n.
func (e *pairEnv) k3sEndpoint(ctx context.Context, n *node) (string, error) {
	out, err := n.m.ExecOK(ctx, "cat /etc/rancher/k3s/config.yaml")
	if err != nil {
		return "", err
	}
	var c struct {
		Endpoint string `yaml:"datastore-endpoint"`
	}
	if err := yaml.Unmarshal([]byte(out), &c); err != nil || c.Endpoint == "" {
		return "", fmt.Errorf("%s: /etc/rancher/k3s/config.yaml without datastore-endpoint (%v)", n.name, err)
	}
	return c.Endpoint, nil
}

var errSkipScenario = errors.New("scenario skipped")

// summaryRecorder keeps the run's results; saved and printed at the end.
type summaryRecorder struct {
	mu sync.Mutex
	s  report.Summary
}

func (r *summaryRecorder) add(res report.Result) {
	r.mu.Lock()
	r.s.Results = append(r.s.Results, res)
	r.mu.Unlock()
}
