package output

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"
)

// BmapBlockSize is the block size of the maps we write (bmaptool's default).
const BmapBlockSize = 4096

// Range is an inclusive range of mapped blocks.
type Range struct{ First, Last int64 }

// MappedRanges lists the blocks of f that hold data (SEEK_DATA/SEEK_HOLE),
// in order and merged. Without SEEK_DATA support every block is mapped.
func MappedRanges(f *os.File, size int64, bs int64) ([]Range, error) {
	if size == 0 {
		return nil, nil
	}
	last := (size - 1) / bs
	var rs []Range
	add := func(first, lastB int64) {
		if n := len(rs); n > 0 && first <= rs[n-1].Last+1 {
			rs[n-1].Last = max(rs[n-1].Last, lastB)
			return
		}
		rs = append(rs, Range{first, lastB})
	}
	var off int64
	for off < size {
		data, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			if off == 0 && errors.Is(err, syscall.EINVAL) { // no SEEK_DATA here
				return []Range{{0, last}}, nil
			}
			return nil, fmt.Errorf("%s: seek data: %w", f.Name(), err)
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return nil, fmt.Errorf("%s: seek hole: %w", f.Name(), err)
		}
		add(data/bs, min((hole-1)/bs, last))
		off = hole
	}
	return rs, nil
}

// openMapped opens the raw image and maps its data in blocks of bs bytes.
func openMapped(raw string, bs int64) (*os.File, int64, []Range, error) {
	f, err := os.Open(raw)
	if err != nil {
		return nil, 0, nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		var rs []Range
		if rs, err = MappedRanges(f, fi.Size(), bs); err == nil {
			return f, fi.Size(), rs, nil
		}
	}
	f.Close()
	return nil, 0, nil, fmt.Errorf("%s: %w", raw, err)
}

// Bmap writes the block map of the raw image (bmaptool's format 2.0, sha256
// checksums) to out: bmaptool copy then writes only the mapped blocks and
// verifies each range, from the raw image or its .zst.
func Bmap(raw, out string) error {
	f, size, rs, err := openMapped(raw, BmapBlockSize)
	if err != nil {
		return err
	}
	defer f.Close()
	var mapped int64
	var body strings.Builder
	buf := make([]byte, 1<<20)
	for _, r := range rs {
		mapped += r.Last - r.First + 1
		start := r.First * BmapBlockSize
		end := min((r.Last+1)*BmapBlockSize, size)
		h := sha256.New()
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, start, end-start), buf); err != nil {
			return fmt.Errorf("%s: %w", raw, err)
		}
		sum := hex.EncodeToString(h.Sum(nil))
		if r.First == r.Last {
			fmt.Fprintf(&body, "        <Range chksum=\"%s\"> %d </Range>\n", sum, r.First)
		} else {
			fmt.Fprintf(&body, "        <Range chksum=\"%s\"> %d-%d </Range>\n", sum, r.First, r.Last)
		}
	}
	blocks := (size + BmapBlockSize - 1) / BmapBlockSize
	zero := strings.Repeat("0", sha256.Size*2)
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" ?>
<!-- Block map of %s, written by the edgepair builder: only the mapped
     blocks need to be written to the target device. Flash with
     bmaptool copy <image>.raw(.zst) /dev/sdX (this file is found by name). -->
<bmap version="2.0">
    <ImageSize> %d </ImageSize>
    <BlockSize> %d </BlockSize>
    <BlocksCount> %d </BlocksCount>
    <MappedBlocksCount> %d </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <!-- sha256 of this file with the value below all "0" -->
    <BmapFileChecksum> %s </BmapFileChecksum>
    <BlockMap>
%s    </BlockMap>
</bmap>
`, strings.TrimSuffix(filepath.Base(raw), ".raw"), size, BmapBlockSize, blocks, mapped, zero, body.String())
	doc := b.Bytes()
	sum := sha256.Sum256(doc)
	doc = bytes.Replace(doc, []byte("<BmapFileChecksum> "+zero), []byte("<BmapFileChecksum> "+hex.EncodeToString(sum[:])), 1)
	return writeFileAtomic(out, doc)
}

// writeFileAtomic writes via a temporary file in the same directory.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// Zstd compresses the raw image into out (zstd, default level, all cores).
// Holes are fed as zeros without reading them. The frame records the
// content size, so `zstd -l` shows the image size.
func Zstd(raw, out string) (err error) {
	f, size, rs, err := openMapped(raw, 1) // byte ranges
	if err != nil {
		return err
	}
	defer f.Close()
	tmp := out + ".tmp"
	o, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			o.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(o, 1<<20)
	zw, err := zstd.NewWriter(bw, zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
	if err != nil {
		return err
	}
	zw.ResetContentSize(bw, size)
	buf := make([]byte, 1<<20)
	var off int64
	for _, r := range rs {
		if err := zeros(zw, r.First-off); err != nil {
			return err
		}
		if _, err := io.CopyBuffer(zw, io.NewSectionReader(f, r.First, r.Last-r.First+1), buf); err != nil {
			return fmt.Errorf("%s: %w", raw, err)
		}
		off = r.Last + 1
	}
	if err := zeros(zw, size-off); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := o.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
