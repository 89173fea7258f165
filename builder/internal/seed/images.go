package seed

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// Label is the volume label cloud-init's NoCloud datasource looks for.
const Label = "cidata"

// FATSize is the size of the FAT32 USB image: the smallest round size with
// the 65525 clusters FAT32 needs at go-diskfs's 512-byte clusters, so
// every tool (kernel, blkid, mtools) agrees it is FAT32.
const FATSize = 40 << 20

// seedFiles are the NoCloud files in the order they are written.
func seedFiles(ns NodeSeed) []struct {
	name string
	data []byte
} {
	return []struct {
		name string
		data []byte
	}{
		{"meta-data", ns.MetaData},
		{"network-config", ns.NetworkConfig},
		{"user-data", ns.UserData},
	}
}

// WriteISO writes the node's NoCloud seed as an ISO9660 image labelled
// cidata at path (mode 0600). The image uses Joliet for the long names
// (user-data, network-config) and no Rock Ridge: Rock Ridge records the
// workspace files' ctime, uid and gid, which would make the image differ
// between runs. Every timestamp inside is mtime, so the image is a function
// of the seed and mtime alone.
func WriteISO(path string, ns NodeSeed, mtime time.Time) error {
	ws, err := os.MkdirTemp("", "edgepair-seed-iso")
	if err != nil {
		return fmt.Errorf("seed ISO: %w", err)
	}
	defer os.RemoveAll(ws)
	for _, f := range seedFiles(ns) {
		p := filepath.Join(ws, f.name)
		if err := os.WriteFile(p, f.data, 0o600); err != nil {
			return fmt.Errorf("seed ISO: %w", err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			return fmt.Errorf("seed ISO: %w", err)
		}
	}
	if err := os.Chtimes(ws, mtime, mtime); err != nil {
		return fmt.Errorf("seed ISO: %w", err)
	}
	if err := removeForRewrite(path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("seed ISO: %w", err)
	}
	defer f.Close()
	b := file.New(f, false)
	fs, err := iso9660.Create(b, 0, 0, 2048, ws)
	if err != nil {
		return fmt.Errorf("seed ISO %s: %w", path, err)
	}
	if err := fs.Finalize(iso9660.FinalizeOptions{Joliet: true, VolumeIdentifier: Label}); err != nil {
		return fmt.Errorf("seed ISO %s: %w", path, err)
	}
	// go-diskfs stamps the volume descriptors with time.Now(): pin them.
	if err := pinVolumeDescriptorTimes(f, mtime); err != nil {
		return fmt.Errorf("seed ISO %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("seed ISO %s: %w", path, err)
	}
	return f.Close()
}

// pinVolumeDescriptorTimes overwrites the creation, modification and
// effective dates of every primary and supplementary volume descriptor
// (ECMA-119 8.4.26-8.4.29: bytes 813, 830, 864) with t, and clears the
// expiration date (847) to "not specified".
func pinVolumeDescriptorTimes(f *os.File, t time.Time) error {
	stamp := []byte(t.UTC().Format("20060102150405") + "00\x00")
	unset := append(bytes.Repeat([]byte("0"), 16), 0)
	for sector := int64(16); sector < 32; sector++ {
		var hdr [6]byte
		if _, err := f.ReadAt(hdr[:], sector*2048); err != nil {
			return err
		}
		if string(hdr[1:6]) != "CD001" {
			return fmt.Errorf("no volume descriptor in sector %d", sector)
		}
		switch hdr[0] {
		case 255: // set terminator
			return nil
		case 1, 2: // primary, supplementary (Joliet)
			for _, off := range []int64{813, 830, 864} {
				if _, err := f.WriteAt(stamp, sector*2048+off); err != nil {
					return err
				}
			}
			if _, err := f.WriteAt(unset, sector*2048+847); err != nil {
				return err
			}
			// ECMA-119 pads identifiers with spaces; go-diskfs leaves
			// NULs after the system and volume identifiers (8-72).
			var id [64]byte
			if _, err := f.ReadAt(id[:], sector*2048+8); err != nil {
				return err
			}
			padSpaces(id[:], hdr[0] == 2)
			if _, err := f.WriteAt(id[:], sector*2048+8); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("no volume descriptor set terminator")
}

// padSpaces replaces trailing NULs of the two 32-byte identifiers in b
// with spaces (UCS-2 big-endian spaces when ucs2 is set).
func padSpaces(b []byte, ucs2 bool) {
	for _, field := range [][]byte{b[:32], b[32:64]} {
		step := 1
		if ucs2 {
			step = 2
		}
		for i := len(field) - step; i >= 0; i -= step {
			if field[i] != 0 || (ucs2 && field[i+1] != 0) {
				break
			}
			if ucs2 {
				field[i+1] = ' '
			} else {
				field[i] = ' '
			}
		}
	}
}

// WriteFAT writes the node's NoCloud seed as a FAT32 image labelled CIDATA
// (FAT labels are upper case; cloud-init looks for both cases), for USB
// sticks: dd it onto the stick as is (no partition table, like a floppy).
// Volume serial, file and label timestamps are pinned, so the image is
// reproducible.
func WriteFAT(path string, ns NodeSeed, mtime time.Time) error {
	if err := removeForRewrite(path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("seed FAT: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(FATSize); err != nil {
		return fmt.Errorf("seed FAT: %w", err)
	}
	b := file.New(f, false)
	fs, err := fat32.Create(b, FATSize, 0, 512, "CIDATA", true)
	if err != nil {
		return fmt.Errorf("seed FAT %s: %w", path, err)
	}
	for _, sf := range seedFiles(ns) {
		if err := writeFSFile(fs, "/"+sf.name, sf.data); err != nil {
			return fmt.Errorf("seed FAT %s: %s: %w", path, sf.name, err)
		}
		if err := fs.Chtimes("/"+sf.name, mtime, mtime, mtime); err != nil {
			return fmt.Errorf("seed FAT %s: %s: %w", path, sf.name, err)
		}
	}
	if err := pinFATLabelTime(f, mtime); err != nil {
		return fmt.Errorf("seed FAT %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("seed FAT %s: %w", path, err)
	}
	return f.Close()
}

func writeFSFile(fs filesystem.FileSystem, name string, data []byte) error {
	w, err := fs.OpenFile(name, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		_ = w.Close()
		return err
	}
	return w.Close()
}

// pinFATLabelTime sets the timestamps of the volume-label entry in the
// FAT32 root directory, which go-diskfs stamps with the current time (its
// files get Chtimes; the label entry has no such call).
func pinFATLabelTime(f *os.File, t time.Time) error {
	var bs [512]byte
	if _, err := f.ReadAt(bs[:], 0); err != nil {
		return err
	}
	le16 := func(o int) int64 { return int64(bs[o]) | int64(bs[o+1])<<8 }
	le32 := func(o int) int64 { return le16(o) | le16(o+2)<<16 }
	bps := le16(11)
	spc := int64(bs[13])
	reserved := le16(14)
	fats := int64(bs[16])
	spf := le32(36)
	rootCluster := le32(44)
	if bps == 0 || spc == 0 || rootCluster < 2 {
		return fmt.Errorf("not a FAT32 boot sector")
	}
	off := (reserved + fats*spf + (rootCluster-2)*spc) * bps
	dir := make([]byte, spc*bps)
	if _, err := f.ReadAt(dir, off); err != nil {
		return err
	}
	d, tm := fatDateTime(t)
	for i := 0; i+32 <= len(dir); i += 32 {
		e := dir[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xe5 || e[11] != 0x08 { // deleted, or not a volume label
			continue
		}
		e[13] = 0 // creation time, 10 ms units
		put16(e[14:], tm)
		put16(e[16:], d)
		put16(e[18:], d) // access date
		put16(e[22:], tm)
		put16(e[24:], d)
		_, err := f.WriteAt(e, off+int64(i))
		return err
	}
	return fmt.Errorf("no volume label entry in the root directory")
}

func put16(b []byte, v uint16) { b[0], b[1] = byte(v), byte(v>>8) }

func fatDateTime(t time.Time) (date, tm uint16) {
	t = t.UTC()
	date = uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	tm = uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	return date, tm
}

// removeForRewrite removes an earlier output so it is created afresh with
// mode 0600 (O_EXCL), never reusing a file with looser permissions.
func removeForRewrite(path string) error {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}
