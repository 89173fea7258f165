package disk

import (
	"bytes"
	"crypto/sha256"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

func assemble(t *testing.T, dir string, epoch int64, seed string) string {
	t.Helper()
	root := filepath.Join(dir, "root.img")
	if _, err := os.Stat(root); err != nil {
		b := bytes.Repeat([]byte("hsqs-synthetic-root "), 100000)
		if err := os.WriteFile(root, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, bytes.Repeat([]byte{0x4d, 0x5a, 1, 2}, 300000), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "disk-"+seed+".raw")
	err := Assemble(out, Layout{ESPSize: 64 << 20, SlotSize: 8 << 20, Seed: seed}, []File{
		{Path: "loader/loader.conf", Data: []byte("default a.conf\n")},
		{Path: "loader/entries/a.conf", Data: []byte("title a\n")},
		{Path: "edgepair/a/vmlinuz", Source: kernel},
		{Path: "EFI/BOOT/BOOTX64.EFI", Data: []byte("MZ fake")},
	}, root, epoch)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sum(t *testing.T, p string) [32]byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// Same inputs and SOURCE_DATE_EPOCH give the same bytes: GUIDs, FAT volume
// serial and FAT timestamps are all pinned.
func TestAssembleIsReproducible(t *testing.T) {
	d1, d2 := t.TempDir(), t.TempDir()
	a := assemble(t, d1, 1700000000, "s")
	b := assemble(t, d2, 1700000000, "s")
	if sum(t, a) != sum(t, b) {
		t.Fatal("two assemblies of the same inputs differ")
	}
	c := assemble(t, d2, 1700000100, "s") // FAT times have 2 s resolution
	if sum(t, a) == sum(t, c) {
		t.Error("SOURCE_DATE_EPOCH does not reach the image (FAT times)")
	}
	e := assemble(t, d2, 1700000000, "other")
	if sum(t, a) == sum(t, e) {
		t.Error("the seed does not change the GUIDs")
	}
}

func TestAssembleLayout(t *testing.T) {
	dir := t.TempDir()
	out := assemble(t, dir, 1700000000, "s")
	l := Layout{ESPSize: 64 << 20, SlotSize: 8 << 20, Seed: "s"}
	d, err := diskfs.Open(out, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tb, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	g := tb.(*gpt.Table)
	want := l.GUIDs()
	if !strings.EqualFold(g.GUID, want.Disk) {
		t.Errorf("disk GUID %s, want %s", g.GUID, want.Disk)
	}
	var names []string
	for _, p := range g.Partitions {
		if p.Type != gpt.Unused {
			names = append(names, p.Name+"="+strings.ToUpper(p.GUID))
		}
	}
	if got := strings.Join(names, " "); got != "ESP="+want.ESP+" edgepair-root-a="+want.SlotA+" edgepair-root-b="+want.SlotB {
		t.Errorf("partitions %s", got)
	}
	// Slot A holds the root image byte for byte.
	var buf bytes.Buffer
	if _, err := d.ReadPartitionContents(2, &buf); err != nil {
		t.Fatal(err)
	}
	root, _ := os.ReadFile(filepath.Join(dir, "root.img"))
	if !bytes.Equal(buf.Bytes()[:len(root)], root) {
		t.Error("slot A does not start with the root image")
	}
	// The ESP is a FAT32 file system with the files.
	fsys, err := d.GetFilesystem(1)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fsys.OpenFile("/loader/loader.conf", os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	if string(b) != "default a.conf\n" {
		t.Errorf("loader.conf = %q", b)
	}
	k, err := fs.ReadFile(fsys, "edgepair/a/vmlinuz")
	if err != nil || len(k) != 1200000 {
		t.Errorf("kernel on ESP: %d bytes, %v", len(k), err)
	}
}

func TestAssembleRejectsOversizedRoot(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root.img")
	if err := os.WriteFile(root, make([]byte, 9<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Assemble(filepath.Join(dir, "x.raw"), Layout{ESPSize: 64 << 20, SlotSize: 8 << 20, Seed: "s"}, nil, root, 1700000000)
	if err == nil || !strings.Contains(err.Error(), "rootSlotSize") {
		t.Errorf("err = %v, want one naming disk.rootSlotSize", err)
	}
}

func TestDeriveGUID(t *testing.T) {
	a, b := DeriveGUID("x", "root-a"), DeriveGUID("x", "root-b")
	if a == b || a != DeriveGUID("x", "root-a") {
		t.Errorf("GUIDs not stable and distinct: %s %s", a, b)
	}
	if a[14] != '4' {
		t.Errorf("%s is not version 4 shaped", a)
	}
}
