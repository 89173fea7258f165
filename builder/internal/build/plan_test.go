package build

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgepair/edgepair/builder/internal/profile"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

const repo = "../../.."

func plan(t *testing.T, name string, mod func(*Options)) *Plan {
	t.Helper()
	p, err := profile.Load(filepath.Join(repo, "profiles", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Profile: p, Repo: repo, Formats: []string{"raw", "qcow2"}, Epoch: 1700000000, MmdebstrapVersion: "mmdebstrap 1.3.5"}
	if mod != nil {
		mod(&o)
	}
	pl, err := NewPlan(o)
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

// The Ubuntu profile cannot be built here (no Ubuntu archive); its plan is
// rendered and compared like Debian's, so any change shows in review.
func TestPlanGolden(t *testing.T) {
	for _, name := range []string{"debian-12", "ubuntu-24.04"} {
		t.Run(name, func(t *testing.T) {
			got := plan(t, name, nil).Render()
			golden := filepath.Join("testdata", name+".plan")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test -update creates it)", err)
			}
			if got != string(want) {
				t.Errorf("plan for %s differs from %s (go test ./builder/internal/build -update to accept):\n%s", name, golden, got)
			}
			if strings.Contains(got, "/work/") || strings.Contains(got, "/home/") {
				t.Errorf("plan contains a host path")
			}
		})
	}
}

func TestPlanProperties(t *testing.T) {
	a := plan(t, "debian-12", nil)
	u := plan(t, "ubuntu-24.04", nil)
	if !strings.Contains(u.Render(), "--components=main,universe") || !strings.Contains(u.Render(), "noble") ||
		!strings.Contains(u.Render(), "http://archive.ubuntu.com/ubuntu") || !strings.Contains(u.Render(), "postgresql-16") {
		t.Error("ubuntu plan does not use noble, main+universe, Ubuntu's archive and postgresql-16")
	}
	if !strings.Contains(a.Cmdline, "root=PARTUUID="+strings.ToLower(a.Layout.GUIDs().SlotA)) {
		t.Errorf("cmdline %q does not boot slot A", a.Cmdline)
	}
	if a.BaseKey == u.BaseKey {
		t.Error("debian and ubuntu share a base key")
	}
	// The base key changes with every base input and not with others.
	b := plan(t, "debian-12", func(o *Options) { o.MmdebstrapVersion = "mmdebstrap 1.4.0" })
	if b.BaseKey == a.BaseKey {
		t.Error("base key ignores the mmdebstrap version")
	}
	c := plan(t, "debian-12", func(o *Options) { o.Epoch = 1800000000; o.Agent = "/x" })
	if c.BaseKey != a.BaseKey {
		t.Error("base key depends on the epoch or the agent (they are not base inputs)")
	}
	if c.Layout.GUIDs() == a.Layout.GUIDs() {
		t.Error("GUIDs do not depend on SOURCE_DATE_EPOCH")
	}
	d := plan(t, "debian-12", func(o *Options) { o.Profile.Packages = append(o.Profile.Packages, "vim") })
	if d.BaseKey == a.BaseKey {
		t.Error("base key ignores the package list")
	}
}

// TestOVASpec: both profiles describe a VM the OVA writer accepts, with the
// guest id of their distribution.
func TestOVASpec(t *testing.T) {
	for name, guest := range map[string]string{"debian-12": "debian10_64Guest", "ubuntu-24.04": "ubuntu64Guest"} {
		s := plan(t, name, nil).OVASpec()
		if err := s.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if s.GuestOS != guest || s.Name != "edgepair-"+name {
			t.Errorf("%s: guest %q name %q, want %q edgepair-%s", name, s.GuestOS, s.Name, guest, name)
		}
	}
}
