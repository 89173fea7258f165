package ova

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
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

// imageSizes returns the virtual size and the bytes that hold data, as
// qemu-img reports them.
func imageSizes(ctx context.Context, src, format string) (virtual, populated int64, err error) {
	b, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", "-f", format, src).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("ova: qemu-img info %s: %w", src, err)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
		ActualSize  int64 `json:"actual-size"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return 0, 0, fmt.Errorf("ova: qemu-img info %s: %w", src, err)
	}
	if info.VirtualSize <= 0 {
		return 0, 0, fmt.Errorf("ova: %s: qemu-img reports no virtual size", src)
	}
	if info.ActualSize <= 0 || info.ActualSize > info.VirtualSize {
		info.ActualSize = info.VirtualSize
	}
	return info.VirtualSize, info.ActualSize, nil
}

// pinCID replaces the random content ID that qemu-img writes into the
// embedded descriptor with one derived from name, so that conversions of the
// same image are identical. The value keeps its length (8 hex digits), so
// the descriptor's size and every offset stay as qemu-img wrote them.
func pinCID(vmdk, name string) error {
	f, err := os.OpenFile(vmdk, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("ova: %w", err)
	}
	defer f.Close()
	head := make([]byte, 64*1024)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("ova: read VMDK header: %w", err)
	}
	head = head[:n]
	i := bytes.Index(head, []byte("\nCID="))
	if i < 0 || i+5+8 > len(head) {
		return fmt.Errorf("ova: %s: no CID line in the embedded descriptor", vmdk)
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	cid := fmt.Sprintf("%08x", h.Sum32())
	if _, err := f.WriteAt([]byte(cid), int64(i+5)); err != nil {
		return fmt.Errorf("ova: pin CID: %w", err)
	}
	return nil
}
