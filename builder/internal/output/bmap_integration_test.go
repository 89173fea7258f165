//go:build integration

package output

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBmaptoolCopiesOurImage: the real bmaptool (bmap-tools) flashes our
// .raw.zst to a "device" file with our .bmap, found by name as a user's
// `bmaptool copy x.raw.zst /dev/sdX` finds it, and verifies every range; a
// corrupted range makes it fail. The real zstd CLI tests the frame.
func TestBmaptoolCopiesOurImage(t *testing.T) {
	for _, tool := range []string{"bmaptool", "zstd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (make deps installs bmap-tools and zstd)", tool)
		}
	}
	d := t.TempDir()
	raw, size := sparseImage(t, d)
	base := filepath.Join(d, "edgepair-test")
	if err := os.Rename(raw, base+".raw"); err != nil {
		t.Fatal(err)
	}
	raw = base + ".raw"
	if err := Bmap(raw, base+".bmap"); err != nil {
		t.Fatal(err)
	}
	if err := Zstd(raw, base+".raw.zst"); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("zstd", "-t", "-q", base+".raw.zst").CombinedOutput(); err != nil {
		t.Fatalf("zstd -t: %v: %s", err, out)
	}

	// The target "device" holds old data everywhere: bmaptool must write
	// every mapped block (the image's holes are not written, as on a disk).
	dev := filepath.Join(d, "dev.img")
	if err := os.WriteFile(dev, bytes.Repeat([]byte{0xAA}, int(size)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bmaptool", "copy", base+".raw.zst", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("bmaptool copy: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "discovered bmap file") || !strings.Contains(string(out), "synchronizing") {
		t.Errorf("bmaptool did not use our bmap (found by name):\n%s", out)
	}
	img, _ := os.ReadFile(raw)
	got, _ := os.ReadFile(dev)
	f, _ := os.Open(raw)
	defer f.Close()
	rs, err := MappedRanges(f, size, BmapBlockSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		a, b := r.First*BmapBlockSize, min((r.Last+1)*BmapBlockSize, size)
		if !bytes.Equal(img[a:b], got[a:b]) {
			t.Fatalf("blocks %d-%d differ on the device after bmaptool copy", r.First, r.Last)
		}
	}

	// An image whose data differs from what the bmap says (one byte in a
	// mapped range) must make bmaptool fail on that range's checksum.
	if err := os.WriteFile(base+".raw", append(append([]byte(nil), img[:5]...), append([]byte{img[5] ^ 0xff}, img[6:]...)...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Zstd(base+".raw", base+"-bad.raw.zst"); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("bmaptool", "copy", "--bmap", base+".bmap", base+"-bad.raw.zst", dev).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "checksum mismatch") {
		t.Fatalf("bmaptool accepted an image that does not match the bmap's range checksums (%v):\n%s", err, out)
	}
	t.Logf("changed image refused as expected: %s", lastLine(string(out)))
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}
