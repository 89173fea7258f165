package output

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// sparseImage writes a sparse test image: data at the start, in the middle
// (not block aligned) and in the last, partial block.
func sparseImage(t *testing.T, dir string) (string, int64) {
	t.Helper()
	p := filepath.Join(dir, "img.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := int64(8<<20 + 1000) // last block partial
	for _, w := range []struct {
		off int64
		b   []byte
	}{
		{0, bytes.Repeat([]byte("gpt!"), 2048)},        // blocks 0-1
		{3<<20 + 100, bytes.Repeat([]byte("x"), 5000)}, // crosses a block boundary
		{size - 10, []byte("end-of-img")},              // partial last block
	} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p, size
}

func TestMappedRanges(t *testing.T) {
	p, size := sparseImage(t, t.TempDir())
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rs, err := MappedRanges(f, size, BmapBlockSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) < 3 {
		t.Fatalf("ranges %v: want at least the 3 written regions", rs)
	}
	last := (size - 1) / BmapBlockSize
	for _, must := range []int64{0, 1, (3<<20 + 100) / BmapBlockSize, (3<<20 + 5099) / BmapBlockSize, last} {
		in := false
		for _, r := range rs {
			in = in || (must >= r.First && must <= r.Last)
		}
		if !in {
			t.Errorf("block %d holds data but is not mapped: %v", must, rs)
		}
	}
	var mapped int64
	for i, r := range rs {
		if r.First > r.Last || r.Last > last || (i > 0 && r.First <= rs[i-1].Last+1) {
			t.Fatalf("ranges not ordered, merged and inside the image: %v", rs)
		}
		mapped += r.Last - r.First + 1
	}
	// The filesystem may map a little around each write, never most of the file.
	if mapped > last/4 {
		t.Errorf("%d of %d blocks mapped: the holes were not found", mapped, last+1)
	}
}

var rangeRE = regexp.MustCompile(`<Range chksum="([0-9a-f]{64})"> (\d+)(?:-(\d+))? </Range>`)

func TestBmap(t *testing.T) {
	d := t.TempDir()
	p, size := sparseImage(t, d)
	out := filepath.Join(d, "img.bmap")
	if err := Bmap(p, out); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	for _, want := range []string{`<bmap version="2.0">`, "<ImageSize> " + strconv.FormatInt(size, 10) + " </ImageSize>",
		"<BlockSize> 4096 </BlockSize>", "<BlocksCount> 2049 </BlocksCount>", "<ChecksumType> sha256 </ChecksumType>"} {
		if !strings.Contains(s, want) {
			t.Errorf("bmap lacks %q:\n%s", want, s)
		}
	}
	// The file checksum is over the file with the value zeroed.
	m := regexp.MustCompile(`<BmapFileChecksum> ([0-9a-f]{64}) </BmapFileChecksum>`).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no BmapFileChecksum:\n%s", s)
	}
	zeroed := strings.Replace(s, m[1], strings.Repeat("0", 64), 1)
	if sum := sha256.Sum256([]byte(zeroed)); hex.EncodeToString(sum[:]) != m[1] {
		t.Errorf("BmapFileChecksum %s does not match the file", m[1])
	}
	// Each range's checksum is over its blocks of the image; counts add up.
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var mapped int64
	ranges := rangeRE.FindAllStringSubmatch(s, -1)
	if len(ranges) == 0 {
		t.Fatalf("no ranges:\n%s", s)
	}
	for _, r := range ranges {
		first, _ := strconv.ParseInt(r[2], 10, 64)
		last := first
		if r[3] != "" {
			last, _ = strconv.ParseInt(r[3], 10, 64)
		}
		mapped += last - first + 1
		end := min((last+1)*BmapBlockSize, size)
		if sum := sha256.Sum256(img[first*BmapBlockSize : end]); hex.EncodeToString(sum[:]) != r[1] {
			t.Errorf("range %d-%d: checksum %s is not that of its blocks", first, last, r[1])
		}
	}
	if !strings.Contains(s, "<MappedBlocksCount> "+strconv.FormatInt(mapped, 10)+" </MappedBlocksCount>") {
		t.Errorf("MappedBlocksCount is not the %d blocks of the ranges:\n%s", mapped, s)
	}
}

func TestZstdRoundTrip(t *testing.T) {
	d := t.TempDir()
	p, size := sparseImage(t, d)
	out := filepath.Join(d, "img.raw.zst")
	if err := Zstd(p, out); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	var got bytes.Buffer
	if _, err := got.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(p)
	if int64(got.Len()) != size || !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("decompressed %d bytes differ from the %d-byte image", got.Len(), size)
	}
	if fi, _ := os.Stat(out); fi.Size() > size/100 {
		t.Errorf("%d bytes compressed from a mostly empty %d-byte image", fi.Size(), size)
	}
	if _, err := os.Stat(out + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left behind: %v", err)
	}
}
