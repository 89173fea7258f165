package ova

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Result describes a written OVA.
type Result struct {
	Path     string
	OVF      string // name of the descriptor inside the archive
	Disk     string // name of the VMDK inside the archive
	DiskSize int64  // bytes of the streamOptimized VMDK
	Capacity int64  // virtual disk size in bytes
}

// Write converts src (a raw or qcow2 disk image; format as qemu-img names it)
// into a streamOptimized VMDK and packs it with an OVF descriptor and a
// SHA256 manifest into out. mtime is written on every archive member, so the
// same src, spec and mtime give the same OVA byte for byte.
func Write(ctx context.Context, src, format, out string, spec Spec, mtime time.Time) (Result, error) {
	if err := spec.Validate(); err != nil {
		return Result{}, err
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return Result{}, fmt.Errorf("ova: qemu-img not found: install the Debian package qemu-utils: %w", err)
	}
	capacity, populated, err := imageSizes(ctx, src, format)
	if err != nil {
		return Result{}, err
	}
	work, err := os.MkdirTemp(filepath.Dir(out), ".ova-")
	if err != nil {
		return Result{}, fmt.Errorf("ova: %w", err)
	}
	defer os.RemoveAll(work)

	diskName := spec.Name + "-disk1.vmdk"
	ovfName := spec.Name + ".ovf"
	mfName := spec.Name + ".mf"
	vmdk := filepath.Join(work, diskName)
	// compat6 and lsilogic as Talos and coreos-assembler use; qemu-img
	// already writes ddb.toolsVersion 2147483647 ("third-party tools").
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-f", format, "-O", "vmdk",
		"-o", "adapter_type=lsilogic,subformat=streamOptimized,compat6", src, vmdk)
	if b, err := cmd.CombinedOutput(); err != nil {
		return Result{}, fmt.Errorf("ova: qemu-img convert %s to streamOptimized VMDK: %w: %s", src, err, bytes.TrimSpace(b))
	}
	if err := pinCID(vmdk, spec.Name); err != nil {
		return Result{}, err
	}
	st, err := os.Stat(vmdk)
	if err != nil {
		return Result{}, fmt.Errorf("ova: %w", err)
	}
	ovf, err := renderOVF(spec, disk{File: diskName, FileSize: st.Size(), Capacity: capacity, PopulatedSize: populated})
	if err != nil {
		return Result{}, err
	}
	vmdkSum, err := fileSHA256(vmdk)
	if err != nil {
		return Result{}, err
	}
	ovfSum := sha256.Sum256(ovf)
	// Exactly "SHA256(name)= hex": no space before "(", never "SHA2-256".
	mf := fmt.Sprintf("SHA256(%s)= %s\nSHA256(%s)= %s\n", ovfName, hex.EncodeToString(ovfSum[:]), diskName, vmdkSum)

	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return Result{}, fmt.Errorf("ova: %w", err)
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	members := []struct {
		name string
		data []byte
		path string
		size int64
	}{
		{name: ovfName, data: ovf, size: int64(len(ovf))},
		{name: mfName, data: []byte(mf), size: int64(len(mf))},
		{name: diskName, path: vmdk, size: st.Size()},
	}
	for _, m := range members {
		hdr := &tar.Header{Name: m.name, Mode: 0o644, Size: m.size, ModTime: mtime.UTC().Truncate(time.Second),
			Typeflag: tar.TypeReg, Format: tar.FormatUSTAR, Uname: "root", Gname: "root"}
		if err := tw.WriteHeader(hdr); err != nil {
			f.Close()
			return Result{}, fmt.Errorf("ova: tar header %s: %w", m.name, err)
		}
		if m.path == "" {
			_, err = tw.Write(m.data)
		} else {
			err = copyFile(tw, m.path)
		}
		if err != nil {
			f.Close()
			return Result{}, fmt.Errorf("ova: tar %s: %w", m.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return Result{}, fmt.Errorf("ova: %w", err)
	}
	if err := f.Close(); err != nil {
		return Result{}, fmt.Errorf("ova: %w", err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return Result{}, fmt.Errorf("ova: %w", err)
	}
	return Result{Path: out, OVF: ovfName, Disk: diskName, DiskSize: st.Size(), Capacity: capacity}, nil
}

func copyFile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("ova: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("ova: hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// imageSizes returns the virtual size and the bytes that hold data. The
// latter is summed from qemu-img map's data extents (SEEK_DATA), not taken
// from the allocated block count, which delayed allocation and speculative
// preallocation change from one moment to the next.
func imageSizes(ctx context.Context, src, format string) (virtual, populated int64, err error) {
	b, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", "-f", format, src).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("ova: qemu-img info %s: %w", src, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return 0, 0, fmt.Errorf("ova: qemu-img info %s: %w", src, err)
	}
	if info.VirtualSize <= 0 {
		return 0, 0, fmt.Errorf("ova: %s: qemu-img reports no virtual size", src)
	}
	b, err = exec.CommandContext(ctx, "qemu-img", "map", "--output=json", "-f", format, src).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("ova: qemu-img map %s: %w", src, err)
	}
	var extents []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Zero   bool  `json:"zero"`
	}
	if err := json.Unmarshal(b, &extents); err != nil {
		return 0, 0, fmt.Errorf("ova: qemu-img map %s: %w", src, err)
	}
	for _, e := range extents {
		if e.Data && !e.Zero {
			populated += e.Length
		}
	}
	return info.VirtualSize, min(populated, info.VirtualSize), nil
}

// pinCID replaces the random content ID that qemu-img writes into the
// embedded descriptor with one derived from name, so that conversions of the
// same image are identical. qemu-img prints the CID with %x (1 to 8 digits),
// so the descriptor text is rewritten with 8 digits inside the descriptor
// area the sparse header declares, which is NUL-padded to whole sectors.
func pinCID(vmdk, name string) error {
	f, err := os.OpenFile(vmdk, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("ova: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 512)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return fmt.Errorf("ova: read VMDK header: %w", err)
	}
	if string(hdr[:4]) != "KDMV" {
		return fmt.Errorf("ova: %s: not a sparse VMDK (magic %q)", vmdk, hdr[:4])
	}
	descOff := int64(binary.LittleEndian.Uint64(hdr[28:])) * 512
	descLen := int64(binary.LittleEndian.Uint64(hdr[36:])) * 512
	if descOff == 0 || descLen == 0 || descLen > 1<<20 {
		return fmt.Errorf("ova: %s: no embedded descriptor", vmdk)
	}
	area := make([]byte, descLen)
	if _, err := f.ReadAt(area, descOff); err != nil {
		return fmt.Errorf("ova: read VMDK descriptor: %w", err)
	}
	text := area
	if i := bytes.IndexByte(area, 0); i >= 0 {
		text = area[:i]
	}
	i := bytes.Index(text, []byte("\nCID="))
	if i < 0 {
		return fmt.Errorf("ova: %s: no CID line in the embedded descriptor", vmdk)
	}
	start := i + len("\nCID=")
	digits := bytes.IndexByte(text[start:], '\n')
	if digits < 1 || digits > 8 {
		return fmt.Errorf("ova: %s: malformed CID line in the embedded descriptor", vmdk)
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	var out []byte
	out = append(out, text[:start]...)
	out = append(out, fmt.Sprintf("%08x", h.Sum32())...)
	out = append(out, text[start+digits:]...)
	if int64(len(out)) > descLen {
		return fmt.Errorf("ova: %s: no room in the descriptor area for the pinned CID", vmdk)
	}
	padded := make([]byte, descLen)
	copy(padded, out)
	if _, err := f.WriteAt(padded, descOff); err != nil {
		return fmt.Errorf("ova: pin CID: %w", err)
	}
	return nil
}
