package netvip

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestTrackFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "track")
	v := &VIP{TrackFile: f, Addr: netip.MustParsePrefix("198.18.0.10/24")}
	for _, c := range []struct {
		ok   bool
		want string
	}{{false, "1\n"}, {true, "0\n"}, {true, "0\n"}, {false, "1\n"}} {
		if err := v.SetEligible(c.ok); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(f)
		if string(b) != c.want {
			t.Fatalf("eligible=%v: file %q want %q", c.ok, b, c.want)
		}
	}
	// someone overwrote it: the next call restores it
	os.WriteFile(f, []byte("0\n"), 0o644)
	if err := v.SetEligible(false); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); string(b) != "1\n" {
		t.Fatalf("not restored: %q", b)
	}
}

func TestARPAnnounceNodeAddr(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "net/ipv4/conf/eth0")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(conf, "arp_announce"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ARPAnnounceNodeAddr(dir, "eth0"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(conf, "arp_announce")); string(b) != "2\n" {
		t.Fatalf("arp_announce = %q, want 2", b)
	}
	for _, bad := range []string{"", "..", "a/b"} {
		if err := ARPAnnounceNodeAddr(dir, bad); err == nil {
			t.Errorf("interface %q accepted", bad)
		}
	}
	if err := ARPAnnounceNodeAddr(dir, "eth9"); err == nil {
		t.Error("missing interface: no error")
	}
}
