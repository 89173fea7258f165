package rootfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// KeyAnnotation marks a cached base image with its cache key.
const KeyAnnotation = "org.edgepair.base.key"

// Cache is a content-addressed store of base images (one OCI image layout
// under Dir/oci) and of their unpacked trees (Dir/trees/<image digest>).
type Cache struct {
	Dir string
}

func (c *Cache) layoutPath() (layout.Path, error) {
	p := filepath.Join(c.Dir, "oci")
	if lp, err := layout.FromPath(p); err == nil {
		return lp, nil
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", err
	}
	return layout.Write(p, empty.Index)
}

// Lookup returns the cached base image for key, or ok=false.
func (c *Cache) Lookup(key string) (img v1.Image, ok bool, err error) {
	lp, err := c.layoutPath()
	if err != nil {
		return nil, false, fmt.Errorf("cache %s: %w", c.Dir, err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		return nil, false, fmt.Errorf("cache %s: %w", c.Dir, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, false, fmt.Errorf("cache %s: %w", c.Dir, err)
	}
	for i := len(m.Manifests) - 1; i >= 0; i-- {
		d := m.Manifests[i]
		if d.Annotations[KeyAnnotation] == key {
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, false, fmt.Errorf("cache %s: image %s: %w", c.Dir, d.Digest, err)
			}
			return img, true, nil
		}
	}
	return nil, false, nil
}

// StoreTar turns a root filesystem tar (mmdebstrap's output) into a one-layer
// OCI image and stores it under key. The tar is moved into the layout as an
// uncompressed layer blob (no copy and no gzip of a 1 GB tree).
func (c *Cache) StoreTar(key, tarPath string) (v1.Image, error) {
	lp, err := c.layoutPath()
	if err != nil {
		return nil, err
	}
	l, err := newFileLayer(tarPath)
	if err != nil {
		return nil, err
	}
	blob := filepath.Join(string(lp), "blobs", l.digest.Algorithm, l.digest.Hex)
	if err := os.MkdirAll(filepath.Dir(blob), 0o755); err != nil {
		return nil, err
	}
	if err := os.Rename(tarPath, blob); err != nil {
		return nil, fmt.Errorf("cache: move base layer: %w", err)
	}
	l.path = blob
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{KeyAnnotation: key})); err != nil {
		return nil, fmt.Errorf("cache: write image: %w", err)
	}
	return img, nil
}

// fileLayer is an uncompressed tar layer backed by a file.
type fileLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func newFileLayer(path string) (*fileLayer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, err
	}
	return &fileLayer{path: path, size: n, digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}}, nil
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }

// OpenBase resolves an OCI reference given to --base: an OCI layout
// directory (optionally dir@sha256:... for one image of several), a
// docker/OCI tarball file, or a registry reference.
func OpenBase(ctx context.Context, ref string) (v1.Image, error) {
	dir, dig, _ := strings.Cut(ref, "@")
	if fi, err := os.Stat(dir); err == nil {
		if fi.IsDir() {
			lp, err := layout.FromPath(dir)
			if err != nil {
				return nil, fmt.Errorf("--base %s: not an OCI image layout: %w", ref, err)
			}
			idx, err := lp.ImageIndex()
			if err != nil {
				return nil, fmt.Errorf("--base %s: %w", ref, err)
			}
			m, err := idx.IndexManifest()
			if err != nil {
				return nil, fmt.Errorf("--base %s: %w", ref, err)
			}
			if dig != "" {
				h, err := v1.NewHash(dig)
				if err != nil {
					return nil, fmt.Errorf("--base %s: %w", ref, err)
				}
				return idx.Image(h)
			}
			if len(m.Manifests) != 1 {
				return nil, fmt.Errorf("--base %s: layout holds %d images; name one as %s@sha256:<digest>", ref, len(m.Manifests), dir)
			}
			return idx.Image(m.Manifests[0].Digest)
		}
		img, err := tarball.ImageFromPath(ref, nil)
		if err != nil {
			return nil, fmt.Errorf("--base %s: not an image tarball: %w", ref, err)
		}
		return img, nil
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("--base %q: not a layout directory, a tarball or an image reference: %w", ref, err)
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("--base %s: %w", ref, err)
	}
	return img, nil
}

// Unpack returns the unpacked tree of img, unpacking it into the cache once
// (keyed by the image digest). It needs root: the tree keeps owners, modes,
// device nodes and extended attributes.
func (c *Cache) Unpack(ctx context.Context, img v1.Image) (string, error) {
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	tree := filepath.Join(c.Dir, "trees", d.Hex)
	if _, err := os.Stat(filepath.Join(tree, ".edgepair-complete")); err == nil {
		return filepath.Join(tree, "root"), nil
	}
	if err := os.RemoveAll(tree); err != nil {
		return "", err
	}
	root := filepath.Join(tree, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	cmd := exec.CommandContext(ctx, "tar", "-C", root, "-xpf", "-", "--numeric-owner",
		"--xattrs", "--xattrs-include=*", "--same-owner")
	cmd.Stdin = rc
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("unpack base %s: tar: %w: %s", d, err, strings.TrimSpace(string(out)))
	}
	if err := os.WriteFile(filepath.Join(tree, ".edgepair-complete"), []byte(d.String()+"\n"), 0o644); err != nil {
		return "", err
	}
	return root, nil
}

// ErrNotCached is returned when a build must not run mmdebstrap but the base
// is missing.
var ErrNotCached = errors.New("base not in cache")

// Lock takes an exclusive lock on the cache (flock on Dir/lock), so two
// builds sharing a cache do not both run mmdebstrap for the same key: the
// second waits, then finds the base cached. The returned func releases it.
func (c *Cache) Lock(ctx context.Context) (func(), error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(c.Dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock cache %s: %w", c.Dir, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
