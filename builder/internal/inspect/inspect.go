// Package inspect reads an edgepair raw image without mounting it: the GPT,
// the ESP's loader entry and manifest (go-diskfs), so `builder inspect`
// shows slots, profile digest, kernel and package versions.
package inspect

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// Partition is one GPT entry.
type Partition struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	Type  string `json:"type"`
	GUID  string `json:"guid"`
	Start uint64 `json:"startSector"`
	Size  uint64 `json:"size"`
}

// Image is what inspect found.
type Image struct {
	Path        string          `json:"path"`
	Size        int64           `json:"size"`
	DiskGUID    string          `json:"diskGuid"`
	Partitions  []Partition     `json:"partitions"`
	LoaderEntry string          `json:"loaderEntry"`
	Manifest    json.RawMessage `json:"manifest"`
}

// Read inspects the raw image at path.
func Read(path string) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	magic := make([]byte, 4)
	_, _ = io.ReadFull(f, magic)
	f.Close()
	if string(magic) == "QFI\xfb" {
		return nil, fmt.Errorf("%s is a qcow2 image; inspect reads the raw image (or convert: qemu-img convert -O raw %s x.raw)", path, path)
	}
	d, err := diskfs.Open(path, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer d.Close()
	t, err := d.GetPartitionTable()
	if err != nil {
		return nil, fmt.Errorf("%s: no partition table: %w", path, err)
	}
	g, ok := t.(*gpt.Table)
	if !ok {
		return nil, fmt.Errorf("%s: not a GPT disk", path)
	}
	img := &Image{Path: path, Size: d.Size, DiskGUID: g.GUID}
	esp := 0
	for _, p := range g.Partitions {
		if p.Type == gpt.Unused {
			continue
		}
		img.Partitions = append(img.Partitions, Partition{Index: p.Index, Name: p.Name, Type: string(p.Type), GUID: p.GUID, Start: p.Start, Size: p.Size})
		if p.Type == gpt.EFISystemPartition && esp == 0 {
			esp = p.Index
		}
	}
	if esp == 0 {
		return nil, fmt.Errorf("%s: no EFI system partition", path)
	}
	fsys, err := d.GetFilesystem(esp)
	if err != nil {
		return nil, fmt.Errorf("%s: ESP: %w", path, err)
	}
	if b, err := fs.ReadFile(fsys, "/loader/entries/edgepair-a.conf"); err == nil {
		img.LoaderEntry = string(b)
	}
	b, err := fs.ReadFile(fsys, "/edgepair/manifest.json")
	if err != nil {
		return nil, fmt.Errorf("%s: ESP has no edgepair/manifest.json (not an edgepair image?): %w", path, err)
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("%s: edgepair/manifest.json is not valid JSON", path)
	}
	img.Manifest = json.RawMessage(strings.TrimSpace(string(b)))
	return img, nil
}
