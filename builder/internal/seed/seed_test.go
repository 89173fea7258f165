package seed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgepair/edgepair/agent/pairconfig"
	"github.com/edgepair/edgepair/agent/pairconfig/strictyaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// counter is a deterministic stand-in for crypto/rand in golden tests.
type counter struct{ n byte }

func (c *counter) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.n
		c.n++
	}
	return len(p), nil
}

var created = time.Date(2026, 11, 25, 3, 4, 5, 0, time.UTC)

func loadSpec(t testing.TB, name string) Spec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSpec(data, name)
	if err != nil {
		t.Fatal(err)
	}
	return *s
}

func fixedRecord(t testing.TB, name string) *Record {
	t.Helper()
	sec, err := GenerateSecrets(&counter{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := newRecord(loadSpec(t, name), created, sec)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// TestRenderGolden compares the rendered cloud-init files of both nodes
// with testdata/golden/<pair file>/<node>/.
func TestRenderGolden(t *testing.T) {
	for _, pf := range []string{"pair.yaml", "pair-full.yaml"} {
		r := fixedRecord(t, pf)
		seeds, err := Render(r)
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Join("testdata", "golden", strings.TrimSuffix(pf, ".yaml"))
		rec, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		golden(t, filepath.Join(base, RecordFile), rec)
		for _, ns := range seeds {
			golden(t, filepath.Join(base, ns.Node, "meta-data"), ns.MetaData)
			golden(t, filepath.Join(base, ns.Node, "user-data"), ns.UserData)
			golden(t, filepath.Join(base, ns.Node, "network-config"), ns.NetworkConfig)
			golden(t, filepath.Join(base, ns.Node, GuestInfoFile), GuestInfoEnv(ns))
			golden(t, filepath.Join(base, ns.Node, GuestInfoVMX), GuestInfoVMXLines(ns))
		}
	}
}

// TestRenderedPairConfig checks that the pair configuration written by
// user-data parses back to the node's configuration, that both nodes share
// the fingerprint, and that the guestinfo values decode to the NoCloud data.
func TestRenderedPairConfig(t *testing.T) {
	r := fixedRecord(t, "pair-full.yaml")
	seeds, err := Render(r)
	if err != nil {
		t.Fatal(err)
	}
	if seeds[0].Config.Fingerprint() != seeds[1].Config.Fingerprint() {
		t.Error("the two nodes' configurations have different fingerprints")
	}
	for _, ns := range seeds {
		pc, err := ns.Config.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		c, err := pairconfig.Parse(pc, "pair.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if c.Self != ns.Node {
			t.Errorf("self %q in %s's seed", c.Self, ns.Node)
		}
		// user-data embeds exactly that file (indented under content: |).
		indented := "      " + strings.ReplaceAll(strings.TrimSuffix(string(pc), "\n"), "\n", "\n      ")
		if !strings.Contains(string(ns.UserData), indented) {
			t.Errorf("%s: user-data does not carry the pair configuration:\n%s", ns.Node, ns.UserData)
		}
		gi := map[string]string{}
		for _, kv := range ns.GuestInfo {
			gi[kv.Key] = kv.Value
		}
		ud, err := gunzipBase64(gi["guestinfo.userdata"])
		if err != nil || !bytes.Equal(ud, ns.UserData) {
			t.Errorf("%s: guestinfo.userdata does not decode to user-data (%v)", ns.Node, err)
		}
		md, err := gunzipBase64(gi["guestinfo.metadata"])
		if err != nil || !bytes.HasPrefix(md, ns.MetaData) || !bytes.Contains(md, []byte("\nnetwork:\n  version: 2\n")) {
			t.Errorf("%s: guestinfo.metadata is not meta-data plus network (%v):\n%s", ns.Node, err, md)
		}
	}
}

func sha(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// sums lists every file under dir with its mode and sha256.
func sums(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		s, err := sha(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		lines = append(lines, fmt.Sprintf("%s %v %s", s, info.Mode().Perm(), rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

// TestWriteReproducible writes the seeds of a fixed record twice, a FAT
// timestamp tick apart, and from the record file written the first time:
// all three trees must be identical, and equal to the golden checksums
// (recorded on another day, so any wall-clock time leaking into an image
// shows up). Secret-bearing files must be 0600.
func TestWriteReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 2x40 MiB sparse FAT images three times")
	}
	ctx := context.Background()
	r := fixedRecord(t, "pair.yaml")
	d1, d2, d3 := t.TempDir(), t.TempDir(), t.TempDir()
	arts, err := Write(ctx, r, d1)
	if err != nil {
		t.Fatal(err)
	}
	if len(arts) != 1+2*7 {
		t.Errorf("%d artifacts, want 15: %v", len(arts), arts)
	}
	time.Sleep(2100 * time.Millisecond) // FAT times have 2 s resolution
	if _, err := Write(ctx, r, d2); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(d1, RecordFile))
	if err != nil {
		t.Fatal(err)
	}
	r3, err := ParseRecord(data, RecordFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Write(ctx, r3, d3); err != nil {
		t.Fatal(err)
	}
	s1, s2, s3 := sums(t, d1), sums(t, d2), sums(t, d3)
	if s1 != s2 {
		t.Errorf("two writes of one record differ:\n%s\n%s", s1, s2)
	}
	if s1 != s3 {
		t.Errorf("--from-record output differs:\n%s\n%s", s1, s3)
	}
	for _, line := range strings.Split(strings.TrimSpace(s1), "\n") {
		f := strings.Fields(line)
		secret := !strings.HasSuffix(f[2], "meta-data") && !strings.HasSuffix(f[2], "network-config")
		if secret && f[1] != "-rw-------" {
			t.Errorf("%s has mode %s, want -rw-------", f[2], f[1])
		}
	}
	for _, n := range []string{"node-a", "node-b"} {
		info, err := os.Stat(filepath.Join(d1, n))
		if err != nil || info.Mode().Perm() != 0o700 {
			t.Errorf("node directory %s: %v %v, want 0700", n, info.Mode(), err)
		}
	}
	golden(t, filepath.Join("testdata", "golden", "pair", "SHA256SUMS"), []byte(s1))
}

// needTools skips the test when a host tool is missing (they come with
// `make deps`: xorriso, mtools, util-linux's blkid).
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps installs it): %v", tool, err)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestImagesWithTools checks the ISO and FAT images with independent
// tools: blkid (what cloud-init's NoCloud uses to find the seed) for type
// and label, xorriso for the ISO's volume id and files, mtools for the FAT
// label and files; every file must equal the rendered one.
func TestImagesWithTools(t *testing.T) {
	needTools(t, "xorriso", "blkid", "mlabel", "mtype")
	r := fixedRecord(t, "pair-full.yaml")
	seeds, err := Render(r)
	if err != nil {
		t.Fatal(err)
	}
	ns := seeds[0]
	dir := t.TempDir()
	iso, img := filepath.Join(dir, "s.iso"), filepath.Join(dir, "s.img")
	if err := WriteISO(iso, ns, created); err != nil {
		t.Fatal(err)
	}
	if err := WriteFAT(img, ns, created); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string][]string{
		iso: {`TYPE="iso9660"`, `LABEL="cidata"`},
		img: {`TYPE="vfat"`, `LABEL="CIDATA"`, `VERSION="FAT32"`},
	} {
		out := run(t, "blkid", "-p", path)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("blkid %s: %q lacks %s", filepath.Base(path), out, w)
			}
		}
	}
	if out := run(t, "xorriso", "-indev", iso, "-pvd_info"); !strings.Contains(out, "Volume Id    : cidata") {
		t.Errorf("xorriso -pvd_info lacks the volume id cidata:\n%s", out)
	} else if !strings.Contains(out, "Creation Time: 2026112503040500") {
		t.Errorf("xorriso -pvd_info: creation time not pinned to the record:\n%s", out)
	}
	if out := run(t, "mlabel", "-s", "-i", img, "::"); !strings.Contains(out, "CIDATA") {
		t.Errorf("mlabel -s: %q, want CIDATA", out)
	}
	for _, sf := range seedFiles(ns) {
		x := filepath.Join(dir, "x-"+sf.name)
		run(t, "xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/"+sf.name, x)
		got, err := os.ReadFile(x)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, sf.data) {
			t.Errorf("ISO %s differs from the rendered file", sf.name)
		}
		if got := run(t, "mtype", "-i", img, "::"+sf.name); got != string(sf.data) {
			t.Errorf("FAT %s differs from the rendered file", sf.name)
		}
	}
}

func TestNewRecordHasFreshSecrets(t *testing.T) {
	spec := loadSpec(t, "pair.yaml")
	a, err := NewRecord(spec, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewRecord(spec, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if a.Secrets.PairKey == b.Secrets.PairKey || a.Secrets.ReplicationPassword == b.Secrets.ReplicationPassword || a.Secrets.K3sToken == b.Secrets.K3sToken {
		t.Error("two new pairs share a secret")
	}
	sa, err := Render(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := Render(b)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(sa[0].MetaData, sb[0].MetaData) {
		t.Error("two pairs got the same instance-id")
	}
	if !bytes.Equal(sa[0].NetworkConfig, sb[0].NetworkConfig) {
		t.Error("network-config depends on the secrets")
	}
}

func TestGenerateSecretsShortRead(t *testing.T) {
	if _, err := GenerateSecrets(bytes.NewReader(make([]byte, 10))); err == nil {
		t.Error("a short random source was accepted")
	}
}

// TestSpecErrors feeds broken pair files and expects an error naming the
// field (and the file and line where the field is written).
func TestSpecErrors(t *testing.T) {
	base, err := os.ReadFile("testdata/pair.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, old, new string
		want           string // substring of the error
	}{
		{"same names", "name: node-b", "name: node-a", `nodes[1].name: "node-a" is also the name of nodes[0]`},
		{"same addresses", "198.18.0.12/24", "198.18.0.11/24", "nodes[1].address: 198.18.0.11 is also the address of nodes[0]"},
		{"vip outside", "vip: 198.18.0.10", "vip: 198.18.1.10", "pair.yaml:10:1: vip: 198.18.1.10 is outside the nodes' subnet"},
		{"vip equals node", "vip: 198.18.0.10", "vip: 198.18.0.12", "vip: 198.18.0.12 is the address of nodes[1].address"},
		{"vip not an address", "vip: 198.18.0.10", "vip: here", `vip: "here" is not an address`},
		{"missing gateway", "gateway: 198.18.0.1\n", "", "gateway: missing, expected the LAN's default gateway"},
		{"gateway outside", "gateway: 198.18.0.1", "gateway: 198.18.9.1", "gateway: 198.18.9.1 is outside the nodes' subnet"},
		{"malformed key", "AAAAC3NzaC1lZDI1NTE5AAAAI", "AAAAC3NzaC1lZDI1NTE5AAAAJ", "sshAuthorizedKeys[0]: malformed ssh-ed25519 key"},
		{"private key", "  - ssh-ed25519", "  - -----BEGIN OPENSSH PRIVATE KEY----- ssh-ed25519", "sshAuthorizedKeys[0]: this is a private key"},
		{"no keys", "sshAuthorizedKeys:\n", "sshAuthorizedKeys: []\n#", "sshAuthorizedKeys: missing"},
		{"unknown field", "interface: eth0", "iface: eth0", `iface: unknown field "iface"`},
		{"missing interface", "interface: eth0\n", "", "nodes[0].interface: missing"},
		{"bad mac", `mac: "52:54:00:EE:00:12"`, `mac: "52:54:00:EE:00"`, "nodes[1].mac:"},
		{"bad address", "198.18.0.12/24", "198.18.0.12", `nodes[1].address: "198.18.0.12" is not an address with prefix length`},
		{"bad name", "name: node-b", "name: Node_B", `nodes[1].name: "Node_B" is not a DNS label`},
		{"no pair", "pair: store-17", "pair: \"\"", "pair: missing"},
		{"root user", "pair: store-17", "pair: store-17\nuser: root", "user: root is not allowed"},
		{"bad dns", "dns: [198.18.0.1]", "dns: [ns1]", `dns[0]: "ns1" is not an IP address`},
		{"link on one node", "    mac: \"52", "    link: 198.19.0.2/30\n    linkInterface: eth1\n    mac: \"52", "nodes[0].link: missing, the direct link needs an address on both nodes"},
		{"three nodes", "nodes:\n", "nodes:\n  - name: node-c\n    address: 198.18.0.13/24\n", "nodes: expected exactly 2 entries, got 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := strings.Replace(string(base), tt.old, tt.new, 1)
			if data == string(base) {
				t.Fatalf("replacement %q not found", tt.old)
			}
			s, err := ParseSpec([]byte(data), "pair.yaml")
			if err == nil {
				// Pair-level rules are checked when the configs are built.
				_, err = newRecord(*s, created, pairconfig.Secrets{
					ReplicationPassword: strings.Repeat("p", 32), K3sToken: strings.Repeat("k", 32),
					PairKey: base64.StdEncoding.EncodeToString(make([]byte, 32)),
				})
			}
			if err == nil {
				t.Fatalf("accepted:\n%s", data)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not contain %q:\n%v", tt.want, err)
			}
			var fe *strictyaml.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error is not a field error: %T", err)
			}
		})
	}
}

func TestRecordErrors(t *testing.T) {
	r := fixedRecord(t, "pair.yaml")
	good, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct{ old, new, want string }{
		"pair key":   {r.Secrets.PairKey, "c2hvcnQ=", "secrets.pairKey: decodes to 5 bytes"},
		"version":    {"recordVersion: 1", "recordVersion: 9", "recordVersion: unsupported version 9"},
		"spec field": {"vip: 198.18.0.10/24", "vip: 198.18.7.10/24", "spec.vip: 198.18.7.10 is outside"},
		"unknown":    {"recordVersion: 1", "recordVersion: 1\nextra: 1", `extra: unknown field "extra"`},
	} {
		t.Run(name, func(t *testing.T) {
			data := strings.Replace(string(good), tt.old, tt.new, 1)
			if data == string(good) {
				t.Fatalf("replacement %q not found", tt.old)
			}
			_, err := ParseRecord([]byte(data), "pair.record.yaml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestDeriveVRRPID(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 1000; i++ {
		id := DeriveVRRPID(fmt.Sprintf("pair-%d", i))
		if id < 1 || id > 255 {
			t.Fatalf("id %d out of range", id)
		}
		seen[id] = true
	}
	if len(seen) < 200 {
		t.Errorf("only %d distinct ids over 1000 names", len(seen))
	}
	if DeriveVRRPID("store-17") != DeriveVRRPID("store-17") {
		t.Error("not deterministic")
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, n := range []string{"pair.yaml", "pair-full.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("nodes: [{name: a}, {name: a}]\nvip: ::1\n"))
	sec := pairconfig.Secrets{ReplicationPassword: strings.Repeat("p", 32), K3sToken: strings.Repeat("k", 32),
		PairKey: base64.StdEncoding.EncodeToString(make([]byte, 32))}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSpec(data, "fuzz.yaml")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		// Normalize is idempotent, and whatever becomes a record renders.
		again := *s
		again.DNS = append([]string(nil), s.DNS...)
		again.SearchDomains = append([]string(nil), s.SearchDomains...)
		again.SSHAuthorizedKeys = append([]string(nil), s.SSHAuthorizedKeys...)
		if err := again.Normalize(); err != nil {
			t.Fatalf("second Normalize failed: %v", err)
		}
		r, err := newRecord(*s, created, sec)
		if err != nil {
			return
		}
		if _, err := Render(r); err != nil {
			t.Fatalf("valid record does not render: %v", err)
		}
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseRecord(b, "record"); err != nil {
			t.Fatalf("record does not parse back: %v\n%s", err, b)
		}
	})
}
