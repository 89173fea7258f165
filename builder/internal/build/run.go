package build

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgepair/edgepair/builder/internal/disk"
	"github.com/edgepair/edgepair/builder/internal/output"
	"github.com/edgepair/edgepair/builder/internal/ova"
	"github.com/edgepair/edgepair/builder/internal/progress"
	"github.com/edgepair/edgepair/builder/internal/rootfs"
	"github.com/edgepair/edgepair/builder/internal/rootimg"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Result is what a build produced.
type Result struct {
	Artifacts []output.Artifact
	Sums      string
	Manifest  Manifest
	// BaseCached is true when the base came from the cache (no mmdebstrap).
	BaseCached bool
	Warnings   []string
	Duration   time.Duration
}

// Run executes the plan.
func Run(ctx context.Context, p *Plan) (*Result, error) {
	o := p.O
	rep := o.Progress
	if rep == nil {
		rep = progress.Nop{}
	}
	start := time.Now()
	res := &Result{}
	env := o.Env
	if err := env.Root("build", "mmdebstrap --mode=root and unpacking the base keep file owners, device nodes and xattrs"); err != nil {
		return nil, err
	}
	tools := []string{"tar", "cp"}
	if p.RootImage.Type == "erofs" {
		tools = append(tools, "mkfs.erofs")
	} else {
		tools = append(tools, "mksquashfs")
	}
	for _, f := range o.Formats {
		if f == "qcow2" || f == "ova" {
			tools = append(tools, "qemu-img")
		}
	}
	if err := env.Require("build", tools...); err != nil {
		return nil, err
	}
	cache := &rootfs.Cache{Dir: o.Cache}
	if err := os.MkdirAll(filepath.Join(o.Cache, "tmp"), 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(filepath.Join(o.Cache, "tmp"), "work-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	// 1. base
	var img v1.Image
	if o.Base != "" {
		rep.Start("base", "OCI image "+o.Base)
		img, err = rootfs.OpenBase(ctx, o.Base)
		if err != nil {
			return nil, err
		}
		rep.Done("base", "")
	} else {
		unlock, err := cache.Lock(ctx)
		if err != nil {
			return nil, err
		}
		defer unlock()
		var ok bool
		if !o.RebuildBase {
			img, ok, err = cache.Lookup(p.BaseKey)
			if err != nil {
				return nil, err
			}
		}
		if ok {
			res.BaseCached = true
			rep.Start("base", "cached "+p.BaseKey[:12])
			rep.Done("base", "mmdebstrap not run")
		} else {
			if err := env.Require("base", "mmdebstrap"); err != nil {
				return nil, err
			}
			rep.Start("base", fmt.Sprintf("mmdebstrap %s from %s (%d packages)", o.Profile.Suite, o.Profile.Mirror, len(o.Profile.Packages)))
			img, err = runMmdebstrap(ctx, p, cache, work)
			if err != nil {
				return nil, err
			}
			rep.Done("base", "cached as "+p.BaseKey[:12])
		}
	}
	imgDigest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	rep.Start("unpack", "base "+imgDigest.Hex[:12])
	base, err := cache.Unpack(ctx, img)
	if err != nil {
		return nil, err
	}
	rep.Done("unpack", "")

	// 2. assembly layer
	rep.Start("layer", "overlays, agent, k3s, units")
	tree := filepath.Join(work, "root")
	if b, err := exec.CommandContext(ctx, "cp", "-al", base, tree).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("hard-link copy of the base: %w: %s", err, b)
	}
	warn, err := applyLayer(ctx, p, tree, work)
	if err != nil {
		return nil, err
	}
	res.Warnings = append(res.Warnings, warn...)
	rep.Done("layer", "")

	// 3. root filesystem image
	rootImg := filepath.Join(work, "root."+p.RootImage.Type)
	rep.Start("compress", p.RootImage.Type+" "+p.RootImage.Compression)
	if err := rootimg.Make(ctx, tree, rootImg, p.RootImage); err != nil {
		return nil, err
	}
	ra, err := output.Describe(rootImg, p.RootImage.Type)
	if err != nil {
		return nil, err
	}
	rep.Done("compress", fmt.Sprintf("%.1f MiB", float64(ra.Size)/(1<<20)))

	// 4. disk
	rep.Start("assemble", "GPT, ESP (FAT32), root slot A")
	m, esp, err := p.espFiles(tree, ra)
	if err != nil {
		return nil, err
	}
	m.Base = BaseInfo{Key: p.BaseKey, Digest: imgDigest.String(), Ref: o.Base}
	if o.Base != "" {
		m.Base.Key = ""
	}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	esp = append(esp, disk.File{Path: "edgepair/manifest.json", Data: append(mj, '\n')})
	if err := os.MkdirAll(o.Output, 0o755); err != nil {
		return nil, err
	}
	raw := filepath.Join(o.Output, p.ImageName()+".raw")
	if err := disk.Assemble(raw, p.Layout, esp, rootImg, o.Epoch); err != nil {
		return nil, err
	}
	rep.Done("assemble", "")
	res.Manifest = *m

	// 5. outputs: hashing the raw image runs while qemu-img converts it
	// (two cores: both finish in about the time of the slower one).
	rep.Start("outputs", strings.Join(o.Formats, ", ")+" + sha256")
	arts := make([]output.Artifact, len(o.Formats))
	errs := make([]error, len(o.Formats))
	var wg sync.WaitGroup
	for i, f := range o.Formats {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := filepath.Join(o.Output, p.ImageName()+"."+f)
			switch f {
			case "qcow2":
				if err := output.Qcow2(ctx, raw, path); err != nil {
					errs[i] = err
					return
				}
			case "raw.zst":
				if err := output.Zstd(raw, path); err != nil {
					errs[i] = err
					return
				}
			case "bmap":
				if err := output.Bmap(raw, path); err != nil {
					errs[i] = err
					return
				}
			case "ova":
				if _, err := ova.Write(ctx, raw, "raw", path, p.OVASpec(), time.Unix(o.Epoch, 0)); err != nil {
					errs[i] = err
					return
				}
			}
			arts[i], errs[i] = output.Describe(path, f)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if !contains(o.Formats, "raw") {
		_ = os.Remove(raw)
	}
	res.Sums, err = output.WriteSums(o.Output, arts)
	if err != nil {
		return nil, err
	}
	rep.Done("outputs", "")
	res.Artifacts = arts
	res.Duration = time.Since(start)
	return res, nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func runMmdebstrap(ctx context.Context, p *Plan, cache *rootfs.Cache, work string) (v1.Image, error) {
	cs := filepath.Join(work, "customize.sh")
	if err := os.WriteFile(cs, []byte(p.Spec.CustomizeScript), 0o755); err != nil {
		return nil, err
	}
	tarPath := filepath.Join(work, "base.tar")
	args := p.Spec.MmdebstrapArgs(tarPath, cs)
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", p.O.Epoch))
	logPath := filepath.Join(cache.Dir, "mmdebstrap-"+p.BaseKey[:16]+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Run(); err != nil {
		os.Remove(tarPath)
		return nil, fmt.Errorf("mmdebstrap failed (%w); its log: %s", err, logPath)
	}
	return cache.StoreTar(p.BaseKey, tarPath)
}

// applyLayer writes the assembly layer onto tree (a hard-link copy of the
// base: files are replaced, never modified in place).
func applyLayer(ctx context.Context, p *Plan, tree, work string) ([]string, error) {
	var warnings []string
	pr := p.O.Profile
	for _, o := range pr.Overlays {
		if err := copyTree(filepath.Join(p.O.Repo, o), tree); err != nil {
			return nil, fmt.Errorf("overlay %s: %w", o, err)
		}
	}
	agent := p.O.Agent
	if agent == "" {
		agent = filepath.Join(work, "edgepair-agent")
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", agent, "./agent/cmd/agent")
		cmd.Dir = p.O.Repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("agent: go build ./agent/cmd/agent failed (pass a binary with --agent): %w: %s", err, strings.TrimSpace(string(b)))
		}
	}
	if err := installFile(agent, filepath.Join(tree, "usr/bin/edgepair-agent"), 0o755); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := installK3s(ctx, p, tree); err != nil {
		return nil, err
	}
	for _, u := range pr.Services.Enable {
		w, err := enableUnit(tree, u)
		if err != nil {
			return nil, err
		}
		if w != "" {
			warnings = append(warnings, w)
		}
	}
	return warnings, nil
}

// copyTree copies src onto dst: directories are created (existing ones keep
// their mode), files and symlinks replace what is there, all owned by root.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		switch {
		case fi.IsDir():
			if _, err := os.Lstat(target); err == nil {
				return nil
			}
			if err := os.Mkdir(target, fi.Mode().Perm()); err != nil {
				return err
			}
			return chownRoot(target)
		case fi.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(path)
			if err != nil {
				return err
			}
			_ = os.Remove(target)
			if err := os.Symlink(l, target); err != nil {
				return err
			}
			return chownRoot(target)
		case fi.Mode().IsRegular():
			return installFile(path, target, fi.Mode().Perm())
		}
		return fmt.Errorf("%s: only directories, files and symlinks are allowed in overlays", path)
	})
}

// installFile replaces target with a root-owned copy of src.
func installFile(src, target string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	out, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chmod(target, mode); err != nil {
		return err
	}
	return chownRoot(target)
}

// chownRoot makes path owned by root when running as root (builds always
// do; unit tests may not).
func chownRoot(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return os.Lchown(path, 0, 0)
}

var unitDirs = []string{"etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"}

// enableUnit creates the symlinks `systemctl enable` would for the unit's
// [Install] WantedBy= and RequiredBy=. A unit the image does not contain
// gives a warning, not an error (its owner may not have written it yet).
func enableUnit(tree, unit string) (string, error) {
	var path, rel string
	for _, d := range unitDirs {
		p := filepath.Join(tree, d, unit)
		if _, err := os.Stat(p); err == nil {
			path, rel = p, "/"+d+"/"+unit
			break
		}
	}
	if path == "" {
		return fmt.Sprintf("services.enable: %s is not in the image (no unit file in %s); not enabled", unit, strings.Join(unitDirs, ", ")), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var targets []string
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "[") {
			section = l
			continue
		}
		if section != "[Install]" {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "WantedBy":
			for _, t := range strings.Fields(v) {
				targets = append(targets, t+".wants")
			}
		case "RequiredBy":
			for _, t := range strings.Fields(v) {
				targets = append(targets, t+".requires")
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if len(targets) == 0 {
		return fmt.Sprintf("services.enable: %s has no [Install] WantedBy=/RequiredBy=; nothing to enable", unit), nil
	}
	for _, t := range targets {
		dir := filepath.Join(tree, "etc/systemd/system", t)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		link := filepath.Join(dir, unit)
		_ = os.Remove(link)
		if err := os.Symlink(rel, link); err != nil {
			return "", err
		}
	}
	return "", nil
}

func installK3s(ctx context.Context, p *Plan, tree string) error {
	pr := p.O.Profile
	dst := filepath.Join(tree, "usr/local/bin/k3s")
	switch {
	case p.O.K3s != "":
		if err := installFile(p.O.K3s, dst, 0o755); err != nil {
			return fmt.Errorf("--k3s: %w", err)
		}
	case pr.K3s != nil && pr.K3s.File != "":
		if err := verifySHA256(pr.K3s.File, pr.K3s.SHA256); err != nil {
			return fmt.Errorf("k3s.file: %w", err)
		}
		if err := installFile(pr.K3s.File, dst, 0o755); err != nil {
			return fmt.Errorf("k3s.file: %w", err)
		}
	case pr.K3s != nil:
		tmp := filepath.Join(filepath.Dir(tree), "k3s")
		if err := rootfs.ExtractFile(ctx, pr.K3s.OCI, pr.K3s.Path, tmp); err != nil {
			return fmt.Errorf("k3s.oci: %w", err)
		}
		if err := verifySHA256(tmp, pr.K3s.SHA256); err != nil {
			return fmt.Errorf("k3s.oci %s: %w", pr.K3s.OCI, err)
		}
		if err := installFile(tmp, dst, 0o755); err != nil {
			return err
		}
	}
	if pr.K3s != nil {
		for i, a := range pr.K3s.AirgapImages {
			if err := verifySHA256(a.File, a.SHA256); err != nil {
				return fmt.Errorf("k3s.airgapImages[%d]: %w", i, err)
			}
			if err := installFile(a.File, filepath.Join(tree, "var/lib/rancher/k3s/agent/images", filepath.Base(a.File)), 0o644); err != nil {
				return fmt.Errorf("k3s.airgapImages[%d]: %w", i, err)
			}
		}
	}
	return nil
}

func verifySHA256(path, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("%s has sha256 %s, the profile pins %s", path, got, want)
	}
	return nil
}

// Manifest is stored on the ESP as edgepair/manifest.json and read back by
// `builder inspect`.
type Manifest struct {
	Name            string            `json:"name"`
	Description     string            `json:"description,omitempty"`
	ProfileDigest   string            `json:"profileDigest"`
	SourceDateEpoch int64             `json:"sourceDateEpoch"`
	Base            BaseInfo          `json:"base"`
	Kernel          string            `json:"kernel"`
	Cmdline         string            `json:"cmdline"`
	RootFS          RootFSInfo        `json:"rootfs"`
	Slots           map[string]string `json:"slots"`
	Packages        map[string]string `json:"packages"`
}

// BaseInfo says where the base root filesystem came from.
type BaseInfo struct {
	Key    string `json:"key,omitempty"`
	Digest string `json:"digest"`
	Ref    string `json:"ref,omitempty"`
}

// RootFSInfo describes the image in root slot A.
type RootFSInfo struct {
	Type        string `json:"type"`
	Compression string `json:"compression"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

func (p *Plan) espFiles(tree string, root output.Artifact) (*Manifest, []disk.File, error) {
	kver, err := kernelVersion(tree)
	if err != nil {
		return nil, nil, err
	}
	pk, err := Packages(filepath.Join(tree, "var/lib/dpkg/status"))
	if err != nil {
		return nil, nil, err
	}
	g := p.Layout.GUIDs()
	m := &Manifest{
		Name: p.O.Profile.Name, Description: p.O.Profile.Description,
		ProfileDigest: p.O.Profile.Digest(), SourceDateEpoch: p.O.Epoch,
		Kernel: kver, Cmdline: p.Cmdline,
		RootFS:   RootFSInfo{Type: p.RootImage.Type, Compression: p.RootImage.Compression, Size: root.Size, SHA256: root.SHA256},
		Slots:    map[string]string{"a": g.SlotA, "b": g.SlotB},
		Packages: pk,
	}
	files := []disk.File{
		{Path: "EFI/BOOT/BOOTX64.EFI", Source: filepath.Join(tree, "usr/lib/systemd/boot/efi/systemd-bootx64.efi")},
		{Path: "edgepair/a/vmlinuz", Source: filepath.Join(tree, "boot", "vmlinuz-"+kver)},
		{Path: "edgepair/a/initrd.img", Source: filepath.Join(tree, "boot", "initrd.img-"+kver)},
		{Path: "loader/loader.conf", Data: []byte(p.LoaderConf())},
		{Path: "loader/entries/edgepair-a.conf", Data: []byte(p.LoaderEntry())},
	}
	for _, f := range files {
		if f.Source == "" {
			continue
		}
		if _, err := os.Stat(f.Source); err != nil {
			return nil, nil, fmt.Errorf("ESP: %s missing from the root filesystem (is its package in the profile?): %w", strings.TrimPrefix(f.Source, tree), err)
		}
	}
	return m, files, nil
}

// kernelVersion finds the one kernel in /boot.
func kernelVersion(tree string) (string, error) {
	ks, err := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	if err != nil {
		return "", err
	}
	if len(ks) != 1 {
		return "", fmt.Errorf("want exactly one kernel in /boot of the base, found %d: %v", len(ks), ks)
	}
	return strings.TrimPrefix(filepath.Base(ks[0]), "vmlinuz-"), nil
}

// Packages reads installed package versions from a dpkg status file.
func Packages(status string) (map[string]string, error) {
	f, err := os.Open(status)
	if err != nil {
		return nil, fmt.Errorf("dpkg status: %w", err)
	}
	defer f.Close()
	return ParseStatus(f)
}

// ParseStatus parses dpkg's status file format.
func ParseStatus(r io.Reader) (map[string]string, error) {
	out := map[string]string{}
	var name, ver, st string
	flush := func() {
		if name != "" && strings.HasSuffix(st, " installed") {
			out[name] = ver
		}
		name, ver, st = "", "", ""
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case l == "":
			flush()
		case strings.HasPrefix(l, "Package: "):
			name = strings.TrimPrefix(l, "Package: ")
		case strings.HasPrefix(l, "Version: "):
			ver = strings.TrimPrefix(l, "Version: ")
		case strings.HasPrefix(l, "Status: "):
			st = strings.TrimPrefix(l, "Status: ")
		}
	}
	flush()
	return out, sc.Err()
}

// SortedPackages lists name=version lines, sorted.
func SortedPackages(m map[string]string) []string {
	var l []string
	for k, v := range m {
		l = append(l, k+"="+v)
	}
	sort.Strings(l)
	return l
}
