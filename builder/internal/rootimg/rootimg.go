// Package rootimg makes the compressed, read-only root filesystem image of a
// tree (squashfs with mksquashfs, or erofs with mkfs.erofs), reproducibly:
// every timestamp is the build's SOURCE_DATE_EPOCH and entries are sorted.
package rootimg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
)

// Options select the filesystem and its compression.
type Options struct {
	Type        string // squashfs or erofs
	Compression string // zstd, xz, gzip, lz4
	Level       int    // zstd or gzip level; 0: the tool's default
	Epoch       int64  // SOURCE_DATE_EPOCH
	Processors  int    // 0: all
}

// Command returns the program and arguments that make out from tree.
func Command(tree, out string, o Options) (string, []string, error) {
	ep := strconv.FormatInt(o.Epoch, 10)
	switch o.Type {
	case "squashfs":
		args := []string{tree, out, "-noappend", "-comp", o.Compression, "-b", "1M",
			"-all-time", ep, "-mkfs-time", ep, "-reproducible", "-no-progress", "-quiet"}
		if o.Level > 0 {
			args = append(args, "-Xcompression-level", strconv.Itoa(o.Level))
		}
		if o.Processors > 0 {
			args = append(args, "-processors", strconv.Itoa(o.Processors))
		}
		return "mksquashfs", args, nil
	case "erofs":
		z := "lz4hc"
		if o.Compression == "xz" {
			z = "lzma"
		}
		return "mkfs.erofs", []string{"-z" + z, "-T" + ep, "-U", "00000000-0000-4000-8000-000000000000", out, tree}, nil
	}
	return "", nil, fmt.Errorf("root filesystem %q: want squashfs or erofs", o.Type)
}

// Make builds out from tree.
func Make(ctx context.Context, tree, out string, o Options) error {
	prog, args, err := Command(tree, out, o)
	if err != nil {
		return err
	}
	_ = os.Remove(out)
	cmd := exec.CommandContext(ctx, prog, args...)
	// mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time, and the
	// options already pin every time: keep the variable out of its way.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SOURCE_DATE_EPOCH=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", prog, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// DefaultProcessors is what Make uses when Options.Processors is 0.
func DefaultProcessors() int { return runtime.NumCPU() }
