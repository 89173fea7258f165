// Package disk assembles the image file: a GPT with deterministic GUIDs, an
// EFI system partition (FAT32, written with go-diskfs) and two root slots,
// slot A holding the compressed root filesystem. It writes one regular file
// and uses no loop devices and no mounts.
//
// The data partition is not part of the image: systemd-repart creates it on
// first boot over the rest of the disk, whatever the disk's size.
package disk

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
)

const (
	sectorSize = 512
	mib        = 1 << 20
	// ESPType and RootType are the GPT partition type GUIDs (the
	// Discoverable Partitions Specification's ESP and root-x86-64). The root
	// slots must not be linux-generic: systemd-repart matches the data
	// partition definition (linux-generic) against existing partitions.
	ESPType  = gpt.EFISystemPartition
	RootType = gpt.Type("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
)

// Partition names (GPT labels), stable: the initramfs and `builder inspect`
// rely on them.
const (
	ESPName   = "ESP"
	SlotAName = "edgepair-root-a"
	SlotBName = "edgepair-root-b"
)

// Layout is the partition layout. All sizes are multiples of 1 MiB.
type Layout struct {
	ESPSize  int64
	SlotSize int64
	// Seed makes the GUIDs: the same seed gives the same GUIDs.
	Seed string
}

// GUIDs are the disk's and partitions' GUIDs, derived from Layout.Seed.
type GUIDs struct {
	Disk, ESP, SlotA, SlotB string
}

// DeriveGUID returns a version-4-shaped UUID from sha256(seed, role): stable
// for a seed, distinct per role.
func DeriveGUID(seed, role string) string {
	s := sha256.Sum256([]byte("edgepair-guid\x00" + seed + "\x00" + role))
	var u uuid.UUID
	copy(u[:], s[:16])
	u[6] = (u[6] & 0x0f) | 0x40
	u[8] = (u[8] & 0x3f) | 0x80
	return strings.ToUpper(u.String())
}

// GUIDs derives the layout's GUIDs.
func (l Layout) GUIDs() GUIDs {
	return GUIDs{
		Disk:  DeriveGUID(l.Seed, "disk"),
		ESP:   DeriveGUID(l.Seed, "esp"),
		SlotA: DeriveGUID(l.Seed, "root-a"),
		SlotB: DeriveGUID(l.Seed, "root-b"),
	}
}

// PartitionPlan is one partition as planned (for the build plan and tests).
type PartitionPlan struct {
	Index      int
	Name       string
	Type       string
	GUID       string
	Start, End uint64 // sectors, inclusive
	Size       int64  // bytes
}

// Plan computes the partitions and the total image size.
func (l Layout) Plan() ([]PartitionPlan, int64, error) {
	if l.ESPSize <= 0 || l.ESPSize%mib != 0 || l.SlotSize <= 0 || l.SlotSize%mib != 0 {
		return nil, 0, fmt.Errorf("disk layout: ESP size %d and slot size %d must be positive multiples of 1 MiB", l.ESPSize, l.SlotSize)
	}
	g := l.GUIDs()
	start := uint64(mib / sectorSize)
	var parts []PartitionPlan
	for i, p := range []struct {
		name, typ, guid string
		size            int64
	}{
		{ESPName, string(ESPType), g.ESP, l.ESPSize},
		{SlotAName, string(RootType), g.SlotA, l.SlotSize},
		{SlotBName, string(RootType), g.SlotB, l.SlotSize},
	} {
		n := uint64(p.size / sectorSize)
		parts = append(parts, PartitionPlan{Index: i + 1, Name: p.name, Type: p.typ, GUID: p.guid, Start: start, End: start + n - 1, Size: p.size})
		start += n
	}
	// 1 MiB at the end holds the backup GPT (33 sectors) with room to spare.
	total := int64(start)*sectorSize + mib
	return parts, total, nil
}

// File is one file on the ESP: its path there and either Data or a host
// file Source.
type File struct {
	Path   string
	Data   []byte
	Source string
}

// Assemble writes the image at out: GPT, ESP with files, root slot A with
// the contents of rootImage (a squashfs or erofs image), slot B empty. The
// output is a sparse file; same inputs give the same bytes.
//
// go-diskfs takes FAT timestamps only from the SOURCE_DATE_EPOCH environment
// variable, so Assemble sets it to epoch for the process.
func Assemble(out string, l Layout, esp []File, rootImage string, epoch int64) (err error) {
	if err := os.Setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(epoch, 10)); err != nil {
		return err
	}
	parts, total, err := l.Plan()
	if err != nil {
		return err
	}
	ri, err := os.Stat(rootImage)
	if err != nil {
		return fmt.Errorf("root image: %w", err)
	}
	if ri.Size() > l.SlotSize {
		return fmt.Errorf("root image %s is %d bytes, larger than a root slot (%d bytes): raise disk.rootSlotSize in the profile", rootImage, ri.Size(), l.SlotSize)
	}
	if err := os.Remove(out); err != nil && !os.IsNotExist(err) {
		return err
	}
	d, err := diskfs.Create(out, total, diskfs.SectorSize512)
	if err != nil {
		return fmt.Errorf("create %s: %w", out, err)
	}
	closed := false
	defer func() {
		if !closed {
			d.Close()
		}
	}()
	table := &gpt.Table{
		LogicalSectorSize:  sectorSize,
		PhysicalSectorSize: sectorSize,
		ProtectiveMBR:      true,
		GUID:               l.GUIDs().Disk,
	}
	for _, p := range parts {
		table.Partitions = append(table.Partitions, &gpt.Partition{
			Index: p.Index, Start: p.Start, End: p.End, Size: uint64(p.Size),
			Type: gpt.Type(p.Type), Name: p.Name, GUID: p.GUID,
		})
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("write GPT: %w", err)
	}
	fs, err := d.CreateFilesystem(diskfsSpec())
	if err != nil {
		return fmt.Errorf("create ESP FAT32: %w", err)
	}
	if err := writeESP(fs, esp); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	closed = true
	if err := d.Close(); err != nil {
		return err
	}
	// go-diskfs only writes whole partitions; the root image is smaller than
	// its slot, so copy it at the slot's offset and leave the rest sparse.
	return writeAt(out, rootImage, int64(parts[1].Start)*sectorSize)
}

func writeAt(out, src string, off int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := os.OpenFile(out, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := io.Copy(io.NewOffsetWriter(f, off), in); err != nil {
		f.Close()
		return fmt.Errorf("write root slot A: %w", err)
	}
	return f.Close()
}

func writeESP(fs filesystem.FileSystem, files []File) error {
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	made := map[string]bool{"/": true}
	for _, f := range sorted {
		p := path.Clean("/" + f.Path)
		dir := path.Dir(p)
		if !made[dir] {
			if err := fs.Mkdir(dir); err != nil {
				return fmt.Errorf("mkdir %s: %w", dir, err)
			}
			for d := dir; d != "/"; d = path.Dir(d) {
				made[d] = true
			}
		}
		w, err := fs.OpenFile(p, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
		var r io.Reader
		if f.Source != "" {
			src, err := os.Open(f.Source)
			if err != nil {
				w.Close()
				return err
			}
			defer src.Close()
			r = src
		} else {
			r = strings.NewReader(string(f.Data))
		}
		if _, err := io.Copy(w, r); err != nil {
			w.Close()
			return fmt.Errorf("write %s: %w", p, err)
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("close %s: %w", p, err)
		}
	}
	return nil
}
