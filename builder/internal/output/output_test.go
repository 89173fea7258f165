package output

import (
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
