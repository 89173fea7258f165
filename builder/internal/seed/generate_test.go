package seed

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseNodeFlag(t *testing.T) {
	n, err := ParseNodeFlag("node-b=198.18.0.12/24,mac=52:54:00:00:00:12,link=198.19.0.2/30,linkInterface=eth1,hostname=b")
	if err != nil {
		t.Fatal(err)
	}
	want := SpecNode{Name: "node-b", Address: "198.18.0.12/24", MAC: "52:54:00:00:00:12", Link: "198.19.0.2/30", LinkInterface: "eth1", Hostname: "b"}
	if n != want {
		t.Errorf("got %+v, want %+v", n, want)
	}
	for _, bad := range []string{"node-b", "=1.2.3.4/24", "a=198.18.0.1/24,mac", "a=198.18.0.1/24,colour=red"} {
		if _, err := ParseNodeFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestGenerateFlagsOnly makes a pair from flags alone, with keys from a
// file, and checks that the result equals the same pair from a pair file.
func TestGenerateFlagsOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("writes images")
	}
	out := t.TempDir()
	o := Overrides{
		Pair:      "store-17",
		Nodes:     []string{"node-a=198.18.0.11/24", "node-b=198.18.0.12/24,mac=52:54:00:EE:00:12"},
		Interface: "eth0", VIP: "198.18.0.10", Gateway: "198.18.0.1", DNS: []string{"198.18.0.1"},
		SSHKeys: []string{"@testdata/ed25519.pub"},
	}
	r, arts, err := Generate(context.Background(), Options{Output: out, Overrides: o, Created: created})
	if err != nil {
		t.Fatal(err)
	}
	if len(arts) != 15 {
		t.Errorf("%d artifacts", len(arts))
	}
	fromFile := loadSpec(t, "pair.yaml")
	got, _ := (&Record{RecordVersion: 1, Created: created, Spec: r.Spec}).Marshal()
	want, _ := (&Record{RecordVersion: 1, Created: created, Spec: fromFile}).Marshal()
	if string(got) != string(want) {
		t.Errorf("flags give another spec than the pair file:\n%s\n%s", got, want)
	}

	// A second new pair into the same directory is refused ...
	_, _, err = Generate(context.Background(), Options{Output: out, Overrides: o})
	if !errors.Is(err, ErrRecordExists) {
		t.Fatalf("overwriting a pair record: got %v, want ErrRecordExists", err)
	}
	// ... unless forced, which makes new secrets.
	r2, _, err := Generate(context.Background(), Options{Output: out, Overrides: o, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if r2.Secrets == r.Secrets {
		t.Error("--force kept the old secrets")
	}
	// --from-record with pair flags is refused.
	_, _, err = Generate(context.Background(), Options{Output: t.TempDir(), FromRecord: filepath.Join(out, RecordFile), Overrides: Overrides{VIP: "198.18.0.20"}})
	if err == nil || !strings.Contains(err.Error(), "--from-record") {
		t.Errorf("from-record with flags: %v", err)
	}
}

func TestGenerateErrorsNameTheSource(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("testdata/pair.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pf := filepath.Join(dir, "pair.yaml")
	if err := os.WriteFile(pf, []byte(strings.Replace(string(data), "vip: 198.18.0.10", "vip: 198.18.0.11", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = Generate(context.Background(), Options{PairFile: pf, Output: dir})
	if err == nil || !strings.Contains(err.Error(), pf+":10:1: vip: 198.18.0.11 is the address of nodes[0].address") {
		t.Errorf("got %v", err)
	}
	_, _, err = Generate(context.Background(), Options{PairFile: pf, Output: dir, Overrides: Overrides{Gateway: "198.18.0.254"}})
	if err == nil || !strings.Contains(err.Error(), pf+" with flags: vip:") {
		t.Errorf("got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, RecordFile)); !os.IsNotExist(err) {
		t.Errorf("a refused pair left a record behind: %v", err)
	}
}
