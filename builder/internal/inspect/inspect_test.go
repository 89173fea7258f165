package inspect

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgepair/edgepair/builder/internal/disk"
)

func TestReadAssembledImage(t *testing.T) {
	d := t.TempDir()
	root := filepath.Join(d, "root.img")
	if err := os.WriteFile(root, []byte("hsqs"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := disk.Layout{ESPSize: 64 << 20, SlotSize: 8 << 20, Seed: "s"}
	out := filepath.Join(d, "x.raw")
	err := disk.Assemble(out, l, []disk.File{
		{Path: "loader/entries/edgepair-a.conf", Data: []byte("title a\noptions root=PARTUUID=x\n")},
		{Path: "edgepair/manifest.json", Data: []byte(`{"name":"t","kernel":"6.1.0-50-amd64"}`)},
	}, root, 1700000000)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Read(out)
	if err != nil {
		t.Fatal(err)
	}
	g := l.GUIDs()
	if !strings.EqualFold(img.DiskGUID, g.Disk) || len(img.Partitions) != 3 || img.Partitions[1].Name != disk.SlotAName || !strings.EqualFold(img.Partitions[1].GUID, g.SlotA) {
		t.Errorf("read %+v", img)
	}
	var m map[string]string
	if err := json.Unmarshal(img.Manifest, &m); err != nil || m["kernel"] != "6.1.0-50-amd64" {
		t.Errorf("manifest %s %v", img.Manifest, err)
	}
	if !strings.Contains(img.LoaderEntry, "root=PARTUUID=x") {
		t.Errorf("loader entry %q", img.LoaderEntry)
	}
	// Not an edgepair image: a clear error.
	q := filepath.Join(d, "x.qcow2")
	if err := os.WriteFile(q, []byte("QFI\xfb\x00\x00\x00\x03"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(q); err == nil || !strings.Contains(err.Error(), "qemu-img convert") {
		t.Errorf("qcow2: %v", err)
	}
}
