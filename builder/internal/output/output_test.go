package output

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseFormats(t *testing.T) {
	f, err := ParseFormats("raw, qcow2,raw")
	if err != nil || strings.Join(f, ",") != "raw,qcow2" {
		t.Errorf("%v %v", f, err)
	}
	if _, err := ParseFormats("raw,vmdk"); err == nil || !strings.Contains(err.Error(), "--formats") || !strings.Contains(err.Error(), "vmdk") {
		t.Errorf("err = %v", err)
	}
}

func TestSums(t *testing.T) {
	d := t.TempDir()
	var arts []Artifact
	for _, n := range []string{"b.qcow2", "a.raw"} {
		p := filepath.Join(d, n)
		if err := os.WriteFile(p, []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := Describe(p, filepath.Ext(n)[1:])
		if err != nil {
			t.Fatal(err)
		}
		arts = append(arts, a)
	}
	p, err := WriteSums(d, arts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	// sha256sum -c format, sorted by name.
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "  a.raw") || !strings.HasSuffix(lines[1], "  b.qcow2") || lines[0] != arts[1].SHA256+"  a.raw" {
		t.Errorf("SHA256SUMS:\n%s", b)
	}
}

// A sparse file hashes like the same bytes written densely.
func TestDescribeSparse(t *testing.T) {
	d := t.TempDir()
	sparse, dense := filepath.Join(d, "s"), filepath.Join(d, "d")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("middle"), 5<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 9<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(12 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b := make([]byte, 12<<20)
	copy(b[5<<20:], "middle")
	copy(b[9<<20:], "end")
	if err := os.WriteFile(dense, b, 0o644); err != nil {
		t.Fatal(err)
	}
	a1, err := Describe(sparse, "raw")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := Describe(dense, "raw")
	if err != nil {
		t.Fatal(err)
	}
	if a1.SHA256 != a2.SHA256 || a1.Size != a2.Size {
		t.Errorf("sparse %+v != dense %+v", a1, a2)
	}
	sum := sha256.Sum256(b)
	if a2.SHA256 != hex.EncodeToString(sum[:]) {
		t.Error("dense hash wrong")
	}
}
