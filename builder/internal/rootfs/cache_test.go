package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func mkTar(t *testing.T, files map[string]string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range []string{"bin/", "bin/k3s", "etc/", "etc/os-release"} {
		c, ok := files[n]
		if !ok {
			continue
		}
		h := &tar.Header{Name: n, Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(c))}
		if strings.HasSuffix(n, "/") {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "base.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var files = map[string]string{"bin/": "", "bin/k3s": "k3s-binary", "etc/": "", "etc/os-release": "ID=debian\n"}

func TestCacheStoreLookup(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	if _, ok, err := c.Lookup("k1"); err != nil || ok {
		t.Fatalf("empty cache: ok=%v err=%v", ok, err)
	}
	img, err := c.StoreTar("k1", mkTar(t, files))
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := c.Lookup("k1")
	if err != nil || !ok {
		t.Fatalf("lookup after store: ok=%v err=%v", ok, err)
	}
	d1, _ := img.Digest()
	d2, _ := got.Digest()
	if d1 != d2 {
		t.Errorf("digest %s != %s", d1, d2)
	}
	if _, ok, _ := c.Lookup("k2"); ok {
		t.Error("other key found")
	}
	// The cache is a plain OCI layout: --base accepts it.
	base, err := OpenBase(context.Background(), filepath.Join(c.Dir, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	d3, _ := base.Digest()
	if d3 != d1 {
		t.Errorf("OpenBase(layout) digest %s, want %s", d3, d1)
	}
	// Unpacking keeps owners and needs root.
	if os.Geteuid() == 0 {
		tree, err := c.Unpack(context.Background(), img)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(tree, "etc/os-release")); err != nil || string(b) != "ID=debian\n" {
			t.Errorf("unpacked os-release %q %v", b, err)
		}
	}
}

// --base from a registry and from a tarball, and the k3s binary out of an
// OCI image, against an in-process registry.
func TestOpenBaseRegistryAndTarball(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	c := &Cache{Dir: t.TempDir()}
	img, err := c.StoreTar("k", mkTar(t, files))
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/rancher/k3s:v1.31.4-k3s1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	got, err := OpenBase(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	if d2, _ := got.Digest(); d1 != d2 {
		t.Errorf("registry digest %s want %s", d2, d1)
	}
	out := filepath.Join(t.TempDir(), "k3s")
	if err := ExtractFile(context.Background(), ref, "/bin/k3s", out); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "k3s-binary" {
		t.Errorf("extracted %q", b)
	}
	if err := ExtractFile(context.Background(), ref, "/bin/nope", out); err == nil {
		t.Error("missing file extracted")
	}
	tb := filepath.Join(t.TempDir(), "img.tar")
	if err := tarball.WriteToFile(tb, r, img); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBase(context.Background(), tb); err != nil {
		t.Errorf("tarball: %v", err)
	}
	if _, err := OpenBase(context.Background(), "Not A Ref!"); err == nil || !strings.Contains(err.Error(), "--base") {
		t.Errorf("bad ref: %v", err)
	}
}

func TestKeyCoversInputs(t *testing.T) {
	s := &Spec{Suite: "bookworm", Packages: []string{"a"}, CustomizeScript: "x"}
	k := s.Key("v1")
	for name, mod := range map[string]func(*Spec){
		"suite":     func(s *Spec) { s.Suite = "trixie" },
		"packages":  func(s *Spec) { s.Packages = []string{"a", "b"} },
		"script":    func(s *Spec) { s.CustomizeScript = "y" },
		"overlays":  func(s *Spec) { s.BaseOverlayDigest = "z" },
		"mirror":    func(s *Spec) { s.Mirror = "http://m" },
		"modules":   func(s *Spec) { s.InitramfsModules = []string{"loop"} },
		"recommend": func(s *Spec) { s.InstallRecommends = true },
	} {
		c := *s
		mod(&c)
		if c.Key("v1") == k {
			t.Errorf("key ignores %s", name)
		}
	}
	if s.Key("v2") == k {
		t.Error("key ignores the mmdebstrap version")
	}
}

func TestTreeDigest(t *testing.T) {
	d := t.TempDir()
	p := filepath.Join(d, "etc/initramfs-tools/hooks/edgepair")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("a"), 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := TreeDigest(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("b"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := TreeDigest(d)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	c, _ := TreeDigest(d)
	if a == b || b == c {
		t.Error("digest ignores content or mode")
	}
	if _, err := TreeDigest(filepath.Join(d, "missing")); err == nil {
		t.Error("missing overlay accepted")
	}
}

func TestLockSerialises(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	unlock, err := c.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if _, err := c.Lock(ctx); err == nil {
		t.Fatal("second lock taken while the first is held")
	}
	unlock()
	u2, err := c.Lock(context.Background())
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	u2()
}
