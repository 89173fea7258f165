package pairconfig

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgepair/edgepair/agent/pairconfig/strictyaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestParseGolden parses every testdata/parse/*.yaml and compares the
// result (the marshalled config, or the error text) with its .golden file.
func TestParseGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/parse/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		t.Run(name, func(t *testing.T) {
			c, err := Load(f)
			var got []byte
			if err != nil {
				got = []byte("error:\n" + err.Error() + "\n")
			} else {
				got, err = c.Marshal()
				if err != nil {
					t.Fatal(err)
				}
			}
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s:\n--- got\n%s--- want\n%s", f, golden, got, want)
			}
		})
	}
}

func valid(t testing.TB) *Config {
	t.Helper()
	c, err := Load("testdata/parse/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMinimalDefaults(t *testing.T) {
	c := valid(t)
	if c.Timeouts.Heartbeat.Duration != DefaultHeartbeat || c.Timeouts.PromoteAfter.Duration != DefaultPromoteAfter ||
		c.Timeouts.DegradeAfter.Duration != DefaultDegradeAfter {
		t.Errorf("timeouts not defaulted: %+v", c.Timeouts)
	}
	if c.Ports != (Ports{5432, 7946, 7947}) {
		t.Errorf("ports not defaulted: %+v", c.Ports)
	}
	if c.Witness.Address != netip.MustParseAddr("198.18.0.1") {
		t.Errorf("witness address %v, want the gateway", c.Witness.Address)
	}
	if c.SelfNode().Name != "node-a" || c.PeerNode().Name != "node-b" || !c.IsInitialPrimary() {
		t.Errorf("self %q peer %q initial %v", c.SelfNode().Name, c.PeerNode().Name, c.IsInitialPrimary())
	}
	k, err := c.PairKeyBytes()
	if err != nil || len(k) != 32 || k[0] != 0 || k[31] != 31 {
		t.Errorf("pair key %x, %v", k, err)
	}
}

// TestDefaultsAreValid guards the default timeouts against the rules.
func TestDefaultsAreValid(t *testing.T) {
	c := valid(t)
	c.Timeouts = Timeouts{}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	pfx := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	lnk := func(s string) *netip.Prefix { p := pfx(s); return &p }
	tests := []struct {
		name   string
		mutate func(c *Config)
		path   string // the field the error must name
		want   string // substring of the message
	}{
		{"pair not a label", func(c *Config) { c.Pair = "Store_17" }, "pair", "not a DNS label"},
		{"node name upper", func(c *Config) { c.Nodes[0].Name = "Node-A"; c.Self = "Node-A"; c.InitialPrimary = "Node-A" }, "nodes[0].name", "not a DNS label"},
		{"same names", func(c *Config) { c.Nodes[1].Name = "node-a" }, "nodes[1].name", "also the name of nodes[0]"},
		{"same address", func(c *Config) { c.Nodes[1].Address = pfx("198.18.0.11/24") }, "nodes[1].address", "also the address of nodes[0]"},
		{"different subnets", func(c *Config) { c.Nodes[1].Address = pfx("198.18.1.12/24") }, "nodes[1].address", "not in the same subnet"},
		{"different prefix", func(c *Config) { c.Nodes[1].Address = pfx("198.18.0.12/25") }, "nodes[1].address", "not in the same subnet"},
		{"network address", func(c *Config) { c.Nodes[0].Address = pfx("198.18.0.0/24") }, "nodes[0].address", "network address"},
		{"broadcast address", func(c *Config) { c.Nodes[0].Address = pfx("198.18.0.255/24") }, "nodes[0].address", "broadcast address"},
		{"host prefix", func(c *Config) { c.Nodes[0].Address = pfx("198.18.0.11/32") }, "nodes[0].address", "no usable subnet"},
		{"missing address", func(c *Config) { c.Nodes[0].Address = netip.Prefix{} }, "nodes[0].address", "missing"},
		{"loopback", func(c *Config) { c.Nodes[0].Address = pfx("127.0.0.2/8") }, "nodes[0].address", "not a unicast host address"},
		{"bad interface", func(c *Config) { c.Nodes[0].Interface = "eth0/1" }, "nodes[0].interface", "not an interface name"},
		{"long interface", func(c *Config) { c.Nodes[1].Interface = "abcdefghijklmnop" }, "nodes[1].interface", "not an interface name"},
		{"self missing", func(c *Config) { c.Self = "" }, "self", "missing"},
		{"self unknown", func(c *Config) { c.Self = "node-c" }, "self", "not one of the nodes"},
		{"initial primary unknown", func(c *Config) { c.InitialPrimary = "node-c" }, "initialPrimary", "not one of the nodes"},
		{"vip outside", func(c *Config) { c.VIP.Address = pfx("198.18.1.10/24") }, "vip.address", "outside the nodes' subnet"},
		{"vip is a node", func(c *Config) { c.VIP.Address = pfx("198.18.0.12/24") }, "vip.address", "address of nodes[1].address"},
		{"vip prefix", func(c *Config) { c.VIP.Address = pfx("198.18.0.10/25") }, "vip.address", "prefix length /25 differs"},
		{"vip missing", func(c *Config) { c.VIP.Address = netip.Prefix{} }, "vip.address", "missing"},
		{"vrrp 0", func(c *Config) { c.VIP.VRRPID = 0 }, "vip.vrrpID", "1..255"},
		{"vrrp 256", func(c *Config) { c.VIP.VRRPID = 256 }, "vip.vrrpID", "1..255"},
		{"gateway missing", func(c *Config) { c.Witness.Gateway = netip.Addr{} }, "witness.gateway", "missing"},
		{"gateway outside", func(c *Config) { c.Witness.Gateway = netip.MustParseAddr("198.18.9.1") }, "witness.gateway", "outside the nodes' subnet"},
		{"gateway is node", func(c *Config) { c.Witness.Gateway = netip.MustParseAddr("198.18.0.11") }, "witness.gateway", "address of nodes[0]"},
		{"gateway is vip", func(c *Config) { c.Witness.Gateway = netip.MustParseAddr("198.18.0.10") }, "witness.gateway", "is the VIP"},
		{"witness is node", func(c *Config) { c.Witness.Address = netip.MustParseAddr("198.18.0.12") }, "witness.address", "address of nodes[1]"},
		{"witness is vip", func(c *Config) { c.Witness.Address = netip.MustParseAddr("198.18.0.10") }, "witness.address", "is the VIP"},
		{"half link", func(c *Config) { c.Nodes[0].Link = lnk("198.19.0.1/30"); c.Nodes[0].LinkInterface = "eth1" }, "nodes[1].link", "both nodes"},
		{"link without iface", func(c *Config) {
			c.Nodes[0].Link, c.Nodes[1].Link = lnk("198.19.0.1/30"), lnk("198.19.0.2/30")
			c.Nodes[1].LinkInterface = "eth1"
		}, "nodes[0].linkInterface", "not an interface name"},
		{"link iface is lan", func(c *Config) {
			c.Nodes[0].Link, c.Nodes[1].Link = lnk("198.19.0.1/30"), lnk("198.19.0.2/30")
			c.Nodes[0].LinkInterface, c.Nodes[1].LinkInterface = "eth1", "eth0"
		}, "nodes[1].linkInterface", "also the LAN interface"},
		{"link same addr", func(c *Config) {
			c.Nodes[0].Link, c.Nodes[1].Link = lnk("198.19.0.1/30"), lnk("198.19.0.1/30")
			c.Nodes[0].LinkInterface, c.Nodes[1].LinkInterface = "eth1", "eth1"
		}, "nodes[1].link", "also the link address"},
		{"link subnets differ", func(c *Config) {
			c.Nodes[0].Link, c.Nodes[1].Link = lnk("198.19.0.1/30"), lnk("198.19.0.5/30")
			c.Nodes[0].LinkInterface, c.Nodes[1].LinkInterface = "eth1", "eth1"
		}, "nodes[1].link", "not in the same subnet"},
		{"link overlaps lan", func(c *Config) {
			c.Nodes[0].Link, c.Nodes[1].Link = lnk("198.18.0.101/30"), lnk("198.18.0.102/30")
			c.Nodes[0].LinkInterface, c.Nodes[1].LinkInterface = "eth1", "eth1"
		}, "nodes[0].link", "overlaps the LAN"},
		{"link iface without link", func(c *Config) { c.Nodes[0].LinkInterface = "eth1" }, "nodes[0].linkInterface", "without nodes[0].link"},
		{"no replication password", func(c *Config) { c.Secrets.ReplicationPassword = "" }, "secrets.replicationPassword", "missing"},
		{"short token", func(c *Config) { c.Secrets.K3sToken = "abc" }, "secrets.k3sToken", "too short"},
		{"long token", func(c *Config) { c.Secrets.K3sToken = strings.Repeat("a", 257) }, "secrets.k3sToken", "too long"},
		{"quote in password", func(c *Config) { c.Secrets.ReplicationPassword = "abcdefgh'ijklmnopq" }, "secrets.replicationPassword", "without spaces, quotes"},
		{"space in token", func(c *Config) { c.Secrets.K3sToken = "abcdefgh ijklmnopq" }, "secrets.k3sToken", "without spaces"},
		{"same secrets", func(c *Config) { c.Secrets.K3sToken = c.Secrets.ReplicationPassword }, "secrets.k3sToken", "independent"},
		{"no pair key", func(c *Config) { c.Secrets.PairKey = "" }, "secrets.pairKey", "missing"},
		{"pair key not base64", func(c *Config) { c.Secrets.PairKey = "not base64!" }, "secrets.pairKey", "not standard base64"},
		{"pair key 16 bytes", func(c *Config) { c.Secrets.PairKey = "AAECAwQFBgcICQoLDA0ODw==" }, "secrets.pairKey", "decodes to 16 bytes"},
		{"heartbeat too slow", func(c *Config) { c.Timeouts.Heartbeat.Duration = 600 * time.Millisecond }, "timeouts.heartbeat", "at most 500ms"},
		{"heartbeat negative", func(c *Config) { c.Timeouts.Heartbeat.Duration = -time.Second }, "timeouts.heartbeat", "more than 0"},
		{"peer dead too soon", func(c *Config) { c.Timeouts.PeerDead.Duration = 500 * time.Millisecond }, "timeouts.peerDead", "less than 3 heartbeats"},
		{"fence before dead", func(c *Config) { c.Timeouts.FenceAfter.Duration = 900 * time.Millisecond }, "timeouts.fenceAfter", "shorter than peerDead"},
		{"promote too close", func(c *Config) { c.Timeouts.PromoteAfter.Duration = 2200 * time.Millisecond }, "timeouts.promoteAfter", "has fenced itself"},
		{"promote before fence", func(c *Config) { c.Timeouts.PromoteAfter.Duration = time.Second }, "timeouts.promoteAfter", "not at least"},
		{"degrade too close", func(c *Config) { c.Timeouts.DegradeAfter.Duration = 3 * time.Second }, "timeouts.degradeAfter", "promotion window"},
		// The standby's window ends peerDead after promoteAfter (agent/internal/pair
		// checks the same rule): 3s + 1s + 1s margin = 5s.
		{"degrade inside window", func(c *Config) { c.Timeouts.DegradeAfter.Duration = 4900 * time.Millisecond }, "timeouts.degradeAfter", "expected >= 5s"},
		{"degrade too long", func(c *Config) { c.Timeouts.DegradeAfter.Duration = 11 * time.Second }, "timeouts.degradeAfter", "at most 10s"},
		{"port range", func(c *Config) { c.Ports.Status = 70000 }, "ports.status", "1..65535"},
		{"port clash", func(c *Config) { c.Ports.Status = c.Ports.Postgres }, "ports.status", "also ports.postgres"},
		{"version", func(c *Config) { c.Version = 3 }, "version", "unsupported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid(t)
			tt.mutate(c)
			err := c.Validate()
			if err == nil {
				t.Fatalf("Validate accepted the config")
			}
			var found bool
			for _, e := range unjoin(err) {
				var fe *strictyaml.FieldError
				if errors.As(e, &fe) && fe.Path == tt.path && strings.Contains(fe.Msg, tt.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("no error for %s containing %q; got:\n%v", tt.path, tt.want, err)
			}
		})
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func TestParseNamesFileLineAndPath(t *testing.T) {
	data, err := os.ReadFile("testdata/parse/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Replace(data, []byte("198.18.0.10/24"), []byte("198.18.5.10/24"), 1)
	_, err = Parse(bad, "seed/pair.yaml")
	if err == nil {
		t.Fatal("accepted a VIP outside the subnet")
	}
	// vip.address is on line 14 of minimal.yaml.
	if want := "seed/pair.yaml:14:3: vip.address: 198.18.5.10 is outside"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, f := range []string{"testdata/parse/minimal.yaml", "testdata/parse/full.yaml"} {
		c, err := Load(f)
		if err != nil {
			t.Fatal(err)
		}
		b1, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		c2, err := Parse(b1, "marshalled")
		if err != nil {
			t.Fatalf("%s: re-parse: %v\n%s", f, err, b1)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Errorf("%s: round trip changed the config:\n%+v\n%+v", f, c, c2)
		}
		b2, _ := c2.Marshal()
		if !bytes.Equal(b1, b2) {
			t.Errorf("%s: Marshal is not deterministic", f)
		}
	}
}

func TestFingerprint(t *testing.T) {
	a := valid(t)
	b := valid(t)
	b.Self = "node-b"
	if a.Fingerprint() != b.Fingerprint() {
		t.Error("the two nodes of one pair have different fingerprints")
	}
	if len(a.Fingerprint()) != 64 {
		t.Errorf("fingerprint %q is not hex SHA-256", a.Fingerprint())
	}
	// Explicit defaults and omitted ones agree.
	c := valid(t)
	c.Timeouts = Timeouts{}
	c.Ports = Ports{}
	if c.Fingerprint() != a.Fingerprint() {
		t.Error("omitted defaults change the fingerprint")
	}
	if c.Timeouts != (Timeouts{}) {
		t.Error("Fingerprint modified its receiver")
	}
	for name, mutate := range map[string]func(*Config){
		"pair key": func(c *Config) { c.Secrets.PairKey = "//79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eA=" },
		"vip":      func(c *Config) { c.VIP.Address = netip.MustParsePrefix("198.18.0.20/24") },
		"name":     func(c *Config) { c.Nodes[1].Name = "node-c" },
		"timeout":  func(c *Config) { c.Timeouts.PromoteAfter.Duration = 4 * time.Second },
		"initial":  func(c *Config) { c.InitialPrimary = "node-b" },
	} {
		d := valid(t)
		mutate(d)
		if d.Fingerprint() == a.Fingerprint() {
			t.Errorf("changing the %s keeps the fingerprint", name)
		}
	}
}

func TestCheckPeer(t *testing.T) {
	a := valid(t)
	b := valid(t)
	b.Self = "node-b"
	if err := a.CheckPeer(b.Self, b.Fingerprint()); err != nil {
		t.Errorf("matching peer refused: %v", err)
	}
	if err := a.CheckPeer("node-a", a.Fingerprint()); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "same name") {
		t.Errorf("peer with our name: %v", err)
	}
	if err := a.CheckPeer("node-x", b.Fingerprint()); !errors.Is(err, ErrMismatch) {
		t.Errorf("peer with unknown name: %v", err)
	}
	other := valid(t)
	other.Secrets.PairKey = "//79/Pv6+fj39vX08/Lx8O/u7ezr6uno5+bl5OPi4eA="
	if err := a.CheckPeer("node-b", other.Fingerprint()); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "fingerprint") {
		t.Errorf("peer from another seed: %v", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/parse/*.yaml")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("nodes: [{name: [1]}, {}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml")
		if err != nil {
			if c != nil {
				t.Fatal("config returned with an error")
			}
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		// Whatever parses must survive a round trip unchanged.
		b, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		c2, err := Parse(b, "again")
		if err != nil {
			t.Fatalf("re-parse of marshalled config: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(c, c2) || c.Fingerprint() != c2.Fingerprint() {
			t.Fatalf("round trip changed the config")
		}
	})
}
