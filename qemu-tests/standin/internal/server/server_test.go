package server

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// The agent renders /etc/rancher/k3s/config.yaml (agent/internal/render); the
// stand-in must read exactly that file.
func TestLoadAgentRenderedConfig(t *testing.T) {
	golden := filepath.Join("..", "..", "..", "..", "agent", "internal", "render", "testdata", "k3s-config.yaml")
	if _, err := os.Stat(golden); err != nil {
		t.Skipf("agent's rendered k3s config not found (%v)", err)
	}
	c, err := Load([]string{"--config", golden})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.DatastoreEndpoint, "postgres://") || c.Token == "" || c.NodeIP == "" || len(c.TLSSANs) == 0 {
		t.Fatalf("fields missing: %+v", c)
	}
	if c.AdvertiseAddress != c.NodeIP {
		t.Fatalf("advertise-address %q, want node-ip %q", c.AdvertiseAddress, c.NodeIP)
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadFlagsOverrideAndLists(t *testing.T) {
	p := writeConfig(t, `datastore-endpoint: "postgres://k3s:pw@198.18.0.10:5432/kubernetes?sslmode=disable"
token: "tok1"
node-ip: 198.18.0.11
tls-san:
  - 198.18.0.10
  - vip.example
write-kubeconfig-mode: "0644"
disable: [traefik, servicelb]
`)
	c, err := Load([]string{"-c", p, "--token=tok2", "--tls-san", "extra.example", "--https-listen-port", "7443", "--cluster-init"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Token != "tok2" || c.HTTPSListenPort != 7443 || c.NodeIP != "198.18.0.11" {
		t.Fatalf("%+v", c)
	}
	if !slices.Equal(c.TLSSANs, []string{"198.18.0.10", "vip.example", "extra.example"}) {
		t.Fatalf("tls-san %q", c.TLSSANs)
	}
	if !slices.Equal(c.Ignored, []string{"cluster-init", "disable", "write-kubeconfig-mode"}) {
		t.Fatalf("ignored %q", c.Ignored)
	}
}

func TestLoadErrors(t *testing.T) {
	cases := map[string]struct{ body, want string }{
		"sqlite":         {"datastore-endpoint: sqlite:///x\ntoken: t\n", "datastore-endpoint: want postgres://"},
		"no endpoint":    {"token: t\n", "datastore-endpoint: missing"},
		"no token":       {"datastore-endpoint: postgres://a:b@h:5432/k\n", "token: missing"},
		"comma token":    {"datastore-endpoint: postgres://a:b@h:5432/k\ntoken: a,b\n", "token: must not contain commas"},
		"bad node-ip":    {"datastore-endpoint: postgres://a:b@h:5432/k\ntoken: t\nnode-ip: nope\n", "node-ip"},
		"bad port":       {"datastore-endpoint: postgres://a:b@h:5432/k\ntoken: t\nhttps-listen-port: 99999\n", "https-listen-port"},
		"not a mapping":  {"- a\n- b\n", "want a mapping"},
		"nested mapping": {"token:\n  a: b\n", "line 2: token"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Load([]string{"--config", writeConfig(t, tc.body)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
		})
	}
	if _, err := Load([]string{"--config", "/nonexistent/config.yaml"}); err == nil {
		t.Fatal("explicit missing config file accepted")
	}
	if _, err := Load([]string{"stray"}); err == nil {
		t.Fatal("positional argument accepted")
	}
}

func testConfig(t *testing.T) Config {
	c, err := Load([]string{"--config", writeConfig(t, "datastore-endpoint: postgres://k3s:secretpw@198.18.0.10:5432/kubernetes\ntoken: K10tok\nnode-ip: 198.18.0.11\ntls-san: [198.18.0.10, edge.example]\nnode-name: node-a\n"), "--data-dir", t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestArgs(t *testing.T) {
	c := testConfig(t)
	p := PathsFor(c, "abc")
	k := strings.Join(KineArgs(c, p), " ")
	if k != "--endpoint postgres://k3s:secretpw@198.18.0.10:5432/kubernetes --listen-address 127.0.0.1:2379" {
		t.Fatalf("kine args: %s", k)
	}
	a := strings.Join(APIServerArgs(c, p), " ")
	for _, want := range []string{"--etcd-servers=http://127.0.0.1:2379", "--secure-port=6443", "--advertise-address=198.18.0.11",
		"--token-auth-file=" + p.TokenFile, "--authorization-mode=RBAC", "--service-cluster-ip-range=10.43.0.0/16",
		"--service-account-signing-key-file=" + p.SAKey, "--service-account-issuer=https://kubernetes.default.svc.cluster.local"} {
		if !strings.Contains(a, want) {
			t.Errorf("apiserver args lack %s:\n%s", want, a)
		}
	}
	if got := redact(c.DatastoreEndpoint); strings.Contains(got, "secretpw") || !strings.Contains(got, "k3s:REDACTED@198.18.0.10") {
		t.Fatalf("redact: %s", got)
	}
}

func TestPrepareAndExtract(t *testing.T) {
	c := testConfig(t)
	payload := fstest.MapFS{
		"VERSIONS":       {Data: []byte("kine v0\nkube-apiserver v0\n")},
		"kine":           {Data: []byte("#!/bin/sh\n")},
		"kube-apiserver": {Data: []byte("#!/bin/sh\necho api\n")},
	}
	key, err := PayloadKey(payload)
	if err != nil {
		t.Fatal(err)
	}
	p := PathsFor(c, key)
	if err := Extract(payload, p.Bin); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(p.Bin, "kube-apiserver")); err != nil || st.Mode().Perm() != 0o755 || st.Size() != 19 {
		t.Fatalf("extracted: %v %v", st, err)
	}
	if _, err := PayloadKey(fstest.MapFS{"VERSIONS": {Data: []byte("x")}}); err == nil || !strings.Contains(err.Error(), "build.sh") {
		t.Fatalf("missing payload: %v", err)
	}
	if err := Prepare(c, p); err != nil {
		t.Fatal(err)
	}
	saKey, _ := os.ReadFile(p.SAKey)
	for _, f := range []string{p.SAKey, p.TokenFile, p.TLSKey} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v (want mode 0600)", f, st, err)
		}
	}
	tok, _ := os.ReadFile(p.TokenFile)
	if string(tok) != "K10tok,admin,admin,\"system:masters\"\n" {
		t.Fatalf("token file: %q", tok)
	}
	certPEM, _ := os.ReadFile(p.TLSCert)
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("no certificate")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"198.18.0.10", "198.18.0.11", "127.0.0.1", "10.43.0.1", "edge.example", "kubernetes.default.svc", "node-a"} {
		if err := cert.VerifyHostname(host); err != nil {
			t.Errorf("certificate does not cover %s: %v", host, err)
		}
	}
	// A second Prepare keeps the service-account key (tokens stay valid).
	if err := Prepare(c, p); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(p.SAKey); string(again) != string(saKey) {
		t.Fatal("service-account key regenerated")
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add([]byte("token: t\ntls-san: [a, b]\n"))
	f.Add([]byte("- x\n"))
	f.Add([]byte("a: {b: c}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseFile("fuzz.yaml", data)
		if err == nil && c.DataDir == "" && !strings.Contains(string(data), "data-dir") && !strings.Contains(string(data), "d:") {
			t.Fatalf("defaults lost: %+v", c)
		}
	})
}
