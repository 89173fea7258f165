package build

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func write(t *testing.T, p, s string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

// The assembly layer works on a hard-link copy of the cached base: it must
// replace files, never write through a shared inode.
func TestCopyTreeNeverWritesThroughHardLinks(t *testing.T) {
	d := t.TempDir()
	base, tree, ov := filepath.Join(d, "base"), filepath.Join(d, "tree"), filepath.Join(d, "ov")
	write(t, filepath.Join(base, "etc/fstab"), "base\n", 0o644)
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(base, "etc/fstab"), filepath.Join(tree, "etc/fstab")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(ov, "etc/fstab"), "overlay\n", 0o644)
	write(t, filepath.Join(ov, "usr/lib/x/run"), "#!/bin/sh\n", 0o755)
	if err := os.Symlink("run", filepath.Join(ov, "usr/lib/x/link")); err != nil {
		t.Fatal(err)
	}
	if err := copyTree(ov, tree); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(base, "etc/fstab")); string(b) != "base\n" {
		t.Errorf("the cached base was modified through a hard link: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(tree, "etc/fstab")); string(b) != "overlay\n" {
		t.Errorf("overlay file not applied: %q", b)
	}
	if fi, err := os.Stat(filepath.Join(tree, "usr/lib/x/run")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("executable mode not kept: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(tree, "usr/lib/x/link")); err != nil || l != "run" {
		t.Errorf("symlink: %q %v", l, err)
	}
}

func TestEnableUnit(t *testing.T) {
	tree := t.TempDir()
	write(t, filepath.Join(tree, "usr/lib/systemd/system/a.service"), "[Unit]\nDescription=a\n[Install]\nWantedBy=multi-user.target ssh.service\nRequiredBy=x.target\n", 0o644)
	write(t, filepath.Join(tree, "usr/lib/systemd/system/noinstall.service"), "[Unit]\nDescription=n\n", 0o644)
	if w, err := enableUnit(tree, "a.service"); err != nil || w != "" {
		t.Fatalf("enable: %q %v", w, err)
	}
	for _, l := range []string{"multi-user.target.wants", "ssh.service.wants", "x.target.requires"} {
		got, err := os.Readlink(filepath.Join(tree, "etc/systemd/system", l, "a.service"))
		if err != nil || got != "/usr/lib/systemd/system/a.service" {
			t.Errorf("%s: %q %v", l, got, err)
		}
	}
	if w, err := enableUnit(tree, "missing.service"); err != nil || !strings.Contains(w, "not in the image") {
		t.Errorf("missing unit: %q %v, want a warning", w, err)
	}
	if w, err := enableUnit(tree, "noinstall.service"); err != nil || !strings.Contains(w, "no [Install]") {
		t.Errorf("unit without [Install]: %q %v, want a warning", w, err)
	}
}

func TestParseStatus(t *testing.T) {
	st := `Package: systemd
Status: install ok installed
Version: 252.39-1~deb12u1
Description: x
 long

Package: gone
Status: deinstall ok config-files
Version: 1.0

Package: keepalived
Status: install ok installed
Version: 1:2.2.7-1+b2
`
	got, err := ParseStatus(strings.NewReader(st))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"systemd": "252.39-1~deb12u1", "keepalived": "1:2.2.7-1+b2"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v want %v", got, want)
	}
	if l := SortedPackages(got); strings.Join(l, " ") != "keepalived=1:2.2.7-1+b2 systemd=252.39-1~deb12u1" {
		t.Errorf("sorted: %v", l)
	}
}

func TestKernelVersion(t *testing.T) {
	tree := t.TempDir()
	if _, err := kernelVersion(tree); err == nil {
		t.Error("no kernel accepted")
	}
	write(t, filepath.Join(tree, "boot/vmlinuz-6.1.0-50-amd64"), "k", 0o644)
	if v, err := kernelVersion(tree); err != nil || v != "6.1.0-50-amd64" {
		t.Errorf("%q %v", v, err)
	}
	write(t, filepath.Join(tree, "boot/vmlinuz-6.1.0-51-amd64"), "k", 0o644)
	if _, err := kernelVersion(tree); err == nil {
		t.Error("two kernels accepted")
	}
}

func TestVerifySHA256(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k3s")
	write(t, p, "k3s", 0o755)
	sum := sha256.Sum256([]byte("k3s"))
	if err := verifySHA256(p, hex.EncodeToString(sum[:])); err != nil {
		t.Errorf("right pin rejected: %v", err)
	}
	if err := verifySHA256(p, strings.Repeat("0", 64)); err == nil || !strings.Contains(err.Error(), "pins") {
		t.Errorf("wrong pin accepted: %v", err)
	}
}
