package build

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
	"github.com/edgepair/edgepair/builder/internal/hosttools"
	"github.com/edgepair/edgepair/builder/internal/output"
	"github.com/edgepair/edgepair/builder/internal/profile"
	"github.com/edgepair/edgepair/builder/internal/progress"
	"github.com/edgepair/edgepair/builder/internal/rootfs"
	"github.com/edgepair/edgepair/builder/internal/rootimg"
)

// The build benchmarks need root and the debian-12 base in the builder's
// cache (.cache/edgepair: `make image` puts it there). They are long, so they
// run only when asked:
//
//	EDGEPAIR_BENCH_BUILD=1  go test -run '^$' -bench WarmBuild -benchtime 1x ./builder/internal/build
//	EDGEPAIR_BENCH_ROOTFS=1 go test -run '^$' -bench RootFS -benchtime 1x -timeout 60m ./builder/internal/build
func benchPlan(b *testing.B) (*Plan, string) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root (unpacks the base with its owners)")
	}
	p, err := profile.Load(filepath.Join(repo, "profiles", "debian-12.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	v, _ := exec.Command("mmdebstrap", "--version").Output()
	agent := os.Getenv("EDGEPAIR_BENCH_AGENT")
	if agent == "" {
		agent = "/usr/bin/true" // an input file like any other; its size does not matter here
	}
	o := Options{
		Profile: p, Repo: repo, Cache: filepath.Join(repo, ".cache", "edgepair"), Output: b.TempDir(),
		Formats: []string{"raw", "qcow2"}, Epoch: 1700000000, MmdebstrapVersion: strings.TrimSpace(string(v)),
		Agent: agent, Env: hosttools.Host,
	}
	pl, err := NewPlan(o)
	if err != nil {
		b.Fatal(err)
	}
	c := &rootfs.Cache{Dir: pl.O.Cache}
	img, ok, err := c.Lookup(pl.BaseKey)
	if err != nil {
		b.Fatal(err)
	}
	if !ok {
		b.Skipf("base %s not cached in %s: run make image first", pl.BaseKey[:12], pl.O.Cache)
	}
	tree, err := c.Unpack(context.Background(), img)
	if err != nil {
		b.Fatal(err)
	}
	return pl, tree
}

// mergedTree makes the tree the build compresses (base + assembly layer).
func mergedTree(b *testing.B, pl *Plan, base string) string {
	b.Helper()
	work := b.TempDir()
	tree := filepath.Join(work, "root")
	if out, err := exec.Command("cp", "-al", base, tree).CombinedOutput(); err != nil {
		b.Fatalf("cp -al: %v: %s", err, out)
	}
	if _, err := applyLayer(context.Background(), pl, tree, work); err != nil {
		b.Fatal(err)
	}
	return tree
}

// BenchmarkWarmBuild times a whole build with the base cached, stage by
// stage, and mksquashfs alone on the same tree in the same run: the ratio
// warm/mksquashfs is the builder's overhead over the compression it cannot
// avoid (goal <= 1.5).
func BenchmarkWarmBuild(b *testing.B) {
	if os.Getenv("EDGEPAIR_BENCH_BUILD") == "" {
		b.Skip("set EDGEPAIR_BENCH_BUILD=1 (minutes; needs root and a cached base)")
	}
	pl, base := benchPlan(b)
	for i := 0; i < b.N; i++ {
		rep := &progress.Text{W: io.Discard}
		pl.O.Progress = rep
		start := time.Now()
		res, err := Run(context.Background(), pl)
		if err != nil {
			b.Fatal(err)
		}
		warm := time.Since(start)
		tree := mergedTree(b, pl, base)
		sq := filepath.Join(b.TempDir(), "alone.squashfs")
		start = time.Now()
		if err := rootimg.Make(context.Background(), tree, sq, pl.RootImage); err != nil {
			b.Fatal(err)
		}
		alone := time.Since(start)
		for _, t := range rep.Timings() {
			b.ReportMetric(t.Duration.Seconds(), t.Stage+"_s")
		}
		b.ReportMetric(warm.Seconds(), "warm_s")
		b.ReportMetric(alone.Seconds(), "mksquashfs_s")
		b.ReportMetric(warm.Seconds()/alone.Seconds(), "warm/mksquashfs")
		b.ReportMetric(float64(res.Manifest.RootFS.Size)/(1<<20), "root_MiB")
		for _, a := range res.Artifacts {
			b.ReportMetric(float64(a.Size)/(1<<20), a.Format+"_MiB")
		}
	}
}

// BenchmarkRootFS compares the read-only root candidates on the real tree:
// mksquashfs (zstd, default level and level 3), mkfs.erofs (lz4hc) and
// go-diskfs's squashfs writer (limited to 15 minutes). EDGEPAIR_BENCH_TREE=dir
// measures another tree instead of the cached debian-12 base + layer.
func BenchmarkRootFS(b *testing.B) {
	if os.Getenv("EDGEPAIR_BENCH_ROOTFS") == "" {
		b.Skip("set EDGEPAIR_BENCH_ROOTFS=1 (tens of minutes; needs root and a cached base)")
	}
	var tree string
	if tree = os.Getenv("EDGEPAIR_BENCH_TREE"); tree == "" {
		pl, base := benchPlan(b)
		tree = mergedTree(b, pl, base)
	}
	report := func(b *testing.B, out string, d time.Duration) {
		a, err := output.Describe(out, "")
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(d.Seconds(), "s")
		b.ReportMetric(float64(a.Size)/(1<<20), "MiB")
	}
	run := func(name string, prog string, args ...string) {
		b.Run(name, func(b *testing.B) {
			if _, err := exec.LookPath(prog); err != nil {
				b.Skipf("%s not installed", prog)
			}
			for i := 0; i < b.N; i++ {
				out := filepath.Join(b.TempDir(), "img")
				a := append([]string(nil), args...)
				for j := range a {
					a[j] = strings.NewReplacer("TREE", tree, "OUT", out).Replace(a[j])
				}
				start := time.Now()
				if o, err := exec.Command(prog, a...).CombinedOutput(); err != nil {
					b.Fatalf("%s: %v: %s", prog, err, o)
				}
				report(b, out, time.Since(start))
			}
		})
	}
	run("mksquashfs-zstd15", "mksquashfs", "TREE", "OUT", "-noappend", "-comp", "zstd", "-b", "1M", "-all-time", "1700000000", "-mkfs-time", "1700000000", "-no-progress", "-quiet")
	run("mksquashfs-zstd3", "mksquashfs", "TREE", "OUT", "-noappend", "-comp", "zstd", "-Xcompression-level", "3", "-b", "1M", "-all-time", "1700000000", "-mkfs-time", "1700000000", "-no-progress", "-quiet")
	run("mkfs.erofs-lz4hc", "mkfs.erofs", "-zlz4hc", "-T1700000000", "OUT", "TREE")
	b.Run("go-diskfs-squashfs", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			out := filepath.Join(b.TempDir(), "img")
			start := time.Now()
			done := make(chan error, 1)
			go func() { done <- diskfsSquashfs(tree, out) }()
			select {
			case err := <-done:
				if err != nil {
					b.Skipf("go-diskfs squashfs failed on the real tree after %s: %v", time.Since(start).Round(time.Second), err)
				}
				report(b, out, time.Since(start))
			case <-time.After(15 * time.Minute):
				b.Skipf("go-diskfs squashfs did not finish in 15 minutes")
			}
		}
	})
}

// diskfsSquashfs writes tree as a squashfs with go-diskfs (copying every
// entry into its workspace, as its API requires).
func diskfsSquashfs(tree, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	fs, err := squashfs.Create(file.New(f, false), 0, 0, 4096)
	if err != nil {
		return err
	}
	var paths []string
	err = filepath.Walk(tree, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, tree), "/")
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case rel == "/":
		case fi.IsDir():
			if err := fs.Mkdir(rel); err != nil {
				return fmt.Errorf("mkdir %s: %w", rel, err)
			}
		case fi.Mode()&os.ModeSymlink != 0:
			t, _ := os.Readlink(p)
			if err := fs.Symlink(t, rel); err != nil {
				return fmt.Errorf("symlink %s: %w", rel, err)
			}
		case fi.Mode().IsRegular():
			w, err := fs.OpenFile(rel, os.O_CREATE|os.O_RDWR)
			if err != nil {
				return fmt.Errorf("create %s: %w", rel, err)
			}
			r, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(w, r)
			r.Close()
			if err != nil {
				return fmt.Errorf("write %s: %w", rel, err)
			}
		}
	}
	return fs.Finalize(squashfs.FinalizeOptions{Compression: &squashfs.CompressorZstd{}})
}
