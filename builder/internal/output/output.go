// Package output turns the raw image into the requested formats and writes
// SHA256SUMS.
package output

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Formats the builder can write: raw, raw.zst (the raw image compressed for
// download), bmap (bmaptool's block map of the raw image), qcow2 and ova.
var Formats = []string{"raw", "raw.zst", "bmap", "qcow2", "ova"}

// ParseFormats parses "raw,qcow2,ova". raw is always produced (the others are
// converted from it) but only listed when asked for.
func ParseFormats(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		ok := false
		for _, k := range Formats {
			ok = ok || f == k
		}
		if !ok {
			return nil, fmt.Errorf("--formats: %q is not a format; want a comma-separated list of %s", f, strings.Join(Formats, ", "))
		}
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out, nil
}

// Artifact is one output file.
type Artifact struct {
	Path   string
	Format string
	Size   int64 // bytes on disk (apparent size)
	SHA256 string
}

// Qcow2 converts raw to a compressed-free qcow2 (qemu-img convert).
func Qcow2(ctx context.Context, raw, out string) error {
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img convert: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return nil
}

// Describe hashes a file. Holes of sparse files (the raw image is mostly
// holes: slot B, the ESP's free space) are hashed from a zero buffer instead
// of being read, which makes hashing the raw image several times faster.
func Describe(path, format string) (Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return Artifact{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Artifact{}, err
	}
	h := sha256.New()
	size := fi.Size()
	var off int64
	for off < size {
		data, err := f.Seek(off, seekData)
		if err != nil { // ENXIO: only a hole remains; or no SEEK_DATA support
			if off == 0 {
				if _, err := f.Seek(0, io.SeekStart); err != nil {
					return Artifact{}, err
				}
				if _, err := io.Copy(h, f); err != nil {
					return Artifact{}, err
				}
				break
			}
			data = size
		}
		if err := zeros(h, data-off); err != nil {
			return Artifact{}, err
		}
		if data >= size {
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return Artifact{}, err
		}
		if _, err := f.Seek(data, io.SeekStart); err != nil {
			return Artifact{}, err
		}
		if _, err := io.CopyN(h, f, hole-data); err != nil {
			return Artifact{}, err
		}
		off = hole
	}
	return Artifact{Path: path, Format: format, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

const (
	seekData = 3 // SEEK_DATA (Linux)
	seekHole = 4 // SEEK_HOLE
)

var zeroBuf = make([]byte, 1<<20)

func zeros(w io.Writer, n int64) error {
	for n > 0 {
		k := int64(len(zeroBuf))
		if n < k {
			k = n
		}
		if _, err := w.Write(zeroBuf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// WriteSums writes dir/SHA256SUMS in sha256sum(1) format, sorted by name.
func WriteSums(dir string, arts []Artifact) (string, error) {
	lines := make([]string, 0, len(arts))
	for _, a := range arts {
		lines = append(lines, a.SHA256+"  "+filepath.Base(a.Path)+"\n")
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i][66:] < lines[j][66:] })
	p := filepath.Join(dir, "SHA256SUMS")
	return p, os.WriteFile(p, []byte(strings.Join(lines, "")), 0o644)
}
