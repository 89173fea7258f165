//go:build integration

package build

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgepair/edgepair/builder/internal/hosttools"
	"github.com/edgepair/edgepair/builder/internal/profile"
	"github.com/edgepair/edgepair/builder/internal/progress"
)

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestRealImageIsReproducible builds the debian-12 image twice from the same
// inputs (the base from the builder's cache, .cache/edgepair; built with
// mmdebstrap first if missing) and SOURCE_DATE_EPOCH, and compares the raw
// images byte for byte. The agent binary is a fixed file here: it is an input
// like any other, and Go's own builds are reproducible with -trimpath.
func TestRealImageIsReproducible(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mmdebstrap --mode=root, unpacking the base with owners)")
	}
	if err := hosttools.Host.Require("reproducibility test", "mmdebstrap", "mksquashfs", "tar", "cp"); err != nil {
		t.Skip(err.Error())
	}
	p, err := profile.Load(filepath.Join(repo, "profiles", "debian-12.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	v, _ := exec.Command("mmdebstrap", "--version").Output()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	var sums []string
	for i := 0; i < 2; i++ {
		o := Options{
			Profile: p, Repo: repo, Cache: filepath.Join(repo, ".cache", "edgepair"), Output: t.TempDir(),
			Formats: []string{"raw"}, Epoch: 1700000000, MmdebstrapVersion: strings.TrimSpace(string(v)),
			Agent: "/usr/bin/true", Env: hosttools.Host, Progress: &progress.Text{W: logWriter{t}},
		}
		pl, err := NewPlan(o)
		if err != nil {
			t.Fatal(err)
		}
		res, err := Run(ctx, pl)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 && !res.BaseCached {
			t.Error("second build ran mmdebstrap again")
		}
		sums = append(sums, res.Artifacts[0].SHA256)
		t.Logf("build %d: %s sha256 %s (root %s)", i+1, res.Artifacts[0].Path, res.Artifacts[0].SHA256, res.Manifest.RootFS.SHA256)
	}
	if sums[0] != sums[1] {
		t.Fatalf("same inputs gave different raw images: %s vs %s", sums[0], sums[1])
	}
}
