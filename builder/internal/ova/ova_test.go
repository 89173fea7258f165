package ova

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func testSpec() Spec {
	return Spec{Name: "edgepair-debian-12", Product: "edgepair", Version: "0.1.0",
		Annotation: "edgepair appliance <test> & co", CPUs: 2, MemoryMiB: 4096,
		HardwareVersion: "vmx-13", GuestOS: "debian12_64Guest", GuestOSID: 96}
}

func TestRenderOVFGolden(t *testing.T) {
	got, err := renderOVF(testSpec(), disk{File: "edgepair-debian-12-disk1.vmdk", FileSize: 123456, Capacity: 4 << 30, PopulatedSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "debian-12.ovf")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("OVF differs from %s; run go test ./builder/internal/ova -update and review the diff", golden)
	}
	// Must be well-formed XML, and must not carry the traps research/builders.md lists.
	if err := xml.Unmarshal(got, new(struct{})); err != nil {
		t.Errorf("OVF is not well-formed XML: %v", err)
	}
	for _, bad := range []string{"BootOrderSection", "SHA2-256"} {
		if bytes.Contains(got, []byte(bad)) {
			t.Errorf("OVF contains %s", bad)
		}
	}
	if !bytes.Contains(got, []byte("&lt;test&gt; &amp; co")) {
		t.Errorf("annotation not XML-escaped")
	}
}

func TestSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mod   func(*Spec)
		field string
	}{
		{"ok", func(*Spec) {}, ""},
		{"empty name", func(s *Spec) { s.Name = "" }, "spec.name"},
		{"slash in name", func(s *Spec) { s.Name = "a/b" }, "spec.name"},
		{"no cpus", func(s *Spec) { s.CPUs = 0 }, "spec.cpus"},
		{"tiny memory", func(s *Spec) { s.MemoryMiB = 100 }, "spec.memoryMiB"},
		{"odd memory", func(s *Spec) { s.MemoryMiB = 1025 }, "spec.memoryMiB"},
		{"bad hw", func(s *Spec) { s.HardwareVersion = "13" }, "spec.hardwareVersion"},
		{"no guest", func(s *Spec) { s.GuestOS = "" }, "spec.guestOS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec()
			tc.mod(&s)
			err := s.Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v does not name %s", err, tc.field)
			}
		})
	}
}

// TestWrite converts a small disk with real qemu-img and checks the archive
// the way vSphere reads it: member order, ustar, manifest, OVF sizes, and a
// VMDK whose content equals the source.
func TestWrite(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (Debian package qemu-utils); cannot convert to VMDK")
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	// 16 MiB with data in a few places and holes elsewhere.
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(16 << 20); err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{0, 5 << 20, 16<<20 - 4096} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte('a' + i)}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	mtime := time.Unix(1700000000, 0)
	ctx := context.Background()
	out1 := filepath.Join(dir, "a.ova")
	res, err := Write(ctx, raw, "raw", out1, testSpec(), mtime)
	if err != nil {
		t.Fatal(err)
	}
	if res.Capacity != 16<<20 {
		t.Errorf("capacity %d, want %d", res.Capacity, 16<<20)
	}
	out2 := filepath.Join(dir, "b.ova")
	if _, err := Write(ctx, raw, "raw", out2, testSpec(), mtime); err != nil {
		t.Fatal(err)
	}
	if sumFile(t, out1) != sumFile(t, out2) {
		t.Errorf("two conversions of the same disk differ: OVA is not reproducible")
	}

	// Read the archive back.
	af, err := os.Open(out1)
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	tr := tar.NewReader(af)
	var names []string
	content := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Format != tar.FormatUSTAR {
			t.Errorf("%s: tar format %v, want ustar", h.Name, h.Format)
		}
		if !h.ModTime.Equal(mtime) {
			t.Errorf("%s: mtime %v, want %v", h.Name, h.ModTime, mtime)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		content[h.Name] = b
	}
	want := []string{"edgepair-debian-12.ovf", "edgepair-debian-12.mf", "edgepair-debian-12-disk1.vmdk"}
	if strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("members %v, want %v (OVF first, then manifest, then disk)", names, want)
	}
	// Manifest: exactly "SHA256(name)= hex" for the OVF and the disk.
	var mf strings.Builder
	for _, n := range []string{want[0], want[2]} {
		s := sha256.Sum256(content[n])
		fmt.Fprintf(&mf, "SHA256(%s)= %s\n", n, hex.EncodeToString(s[:]))
	}
	if got := string(content[want[1]]); got != mf.String() {
		t.Errorf("manifest:\n%s\nwant:\n%s", got, mf.String())
	}
	// OVF: file size and capacity match the disk.
	var env struct {
		References struct {
			File struct {
				Href string `xml:"href,attr"`
				Size int64  `xml:"size,attr"`
			} `xml:"File"`
		} `xml:"References"`
		DiskSection struct {
			Disk struct {
				Capacity int64 `xml:"capacity,attr"`
			} `xml:"Disk"`
		} `xml:"DiskSection"`
	}
	if err := xml.Unmarshal(content[want[0]], &env); err != nil {
		t.Fatal(err)
	}
	if env.References.File.Href != want[2] || env.References.File.Size != int64(len(content[want[2]])) {
		t.Errorf("OVF File %s size %d; archive has %s size %d", env.References.File.Href, env.References.File.Size, want[2], len(content[want[2]]))
	}
	if env.DiskSection.Disk.Capacity != 16<<20 {
		t.Errorf("OVF capacity %d, want %d", env.DiskSection.Disk.Capacity, 16<<20)
	}
	// The VMDK is streamOptimized and holds exactly the source's bytes.
	vmdk := filepath.Join(dir, want[2])
	if err := os.WriteFile(vmdk, content[want[2]], 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := exec.Command("qemu-img", "info", "--output=json", vmdk).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Format string `json:"format"`
		Spec   struct {
			Data struct {
				CreateType string `json:"create-type"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "vmdk" || info.Spec.Data.CreateType != "streamOptimized" {
		t.Errorf("qemu-img sees format %q create-type %q, want vmdk streamOptimized", info.Format, info.Spec.Data.CreateType)
	}
	if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "vmdk", raw, vmdk).CombinedOutput(); err != nil {
		t.Errorf("qemu-img compare raw vs VMDK: %v: %s", err, out)
	}
}

func sumFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestPinCIDShortCID: qemu-img prints the CID with %x, so one conversion in
// sixteen has fewer than 8 digits; the pinned descriptor must not depend on it.
func TestPinCIDShortCID(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (Debian package qemu-utils)")
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "d.raw")
	if err := os.WriteFile(raw, bytes.Repeat([]byte{7}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	var pinned [][]byte
	for i, cid := range []string{"", "abc"} {
		vmdk := filepath.Join(dir, fmt.Sprint(i), "disk.vmdk")
		if err := os.MkdirAll(filepath.Dir(vmdk), 0o755); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		b, err := os.ReadFile(vmdk)
		if err != nil {
			t.Fatal(err)
		}
		if cid != "" { // rewrite the CID to 3 digits, keeping the descriptor NUL-padded
			i := bytes.Index(b, []byte("\nCID=")) + 5
			j := i + bytes.IndexByte(b[i:], '\n')
			end := i + bytes.IndexByte(b[i:], 0)
			line := append([]byte(cid), b[j:end]...)
			copy(b[i:], line)
			for k := i + len(line); k < end; k++ {
				b[k] = 0
			}
			if err := os.WriteFile(vmdk, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := pinCID(vmdk, "x"); err != nil {
			t.Fatal(err)
		}
		b, err = os.ReadFile(vmdk)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("\nCID=")) || bytes.Contains(b, []byte("CID=abc")) {
			t.Fatalf("CID not pinned")
		}
		if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "vmdk", raw, vmdk).CombinedOutput(); err != nil {
			t.Fatalf("pinned VMDK unreadable or changed: %v: %s", err, out)
		}
		pinned = append(pinned, b)
	}
	// Same content apart from qemu-img's CID: identical after pinning.
	if !bytes.Equal(pinned[0], pinned[1]) {
		t.Errorf("pinning an 8-digit and a 3-digit CID gives different files")
	}
}
