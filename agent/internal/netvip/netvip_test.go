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
