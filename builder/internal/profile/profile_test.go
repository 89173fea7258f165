package profile

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

func TestResolvedProfilesGolden(t *testing.T) {
	for _, name := range []string{"debian-12", "ubuntu-24.04"} {
		t.Run(name, func(t *testing.T) {
			p, err := Load(filepath.Join("..", "..", "..", "profiles", name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			got := p.Canonical()
			golden := filepath.Join("testdata", name+".resolved.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Errorf("resolved %s differs from %s (go test ./builder/internal/profile -update to accept):\n%s", name, golden, got)
			}
		})
	}
}

const minimal = `
name: t
distribution: debian
suite: bookworm
mirror: http://deb.debian.org/debian
packages: [linux-image-amd64, systemd, systemd-boot-efi, initramfs-tools]
kernel: {package: linux-image-amd64}
`

func TestDefaults(t *testing.T) {
	p, err := Parse("t.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if p.Variant != "minbase" || p.Disk.RootFilesystem != "squashfs" || p.Disk.Compression != "zstd" ||
		p.Disk.ESPSize != 300*MiB || p.Disk.RootSlotSize != GiB || p.Disk.DataLabel != "edgepair-data" ||
		strings.Join(p.Components, ",") != "main" {
		t.Errorf("defaults not filled: %+v", p)
	}
	q, _ := Parse("t.yaml", []byte(minimal+"disk: {rootSlotSize: 2GiB}\n"))
	if p.Digest() == q.Digest() {
		t.Error("digest does not change with disk.rootSlotSize")
	}
}

func TestErrorsNameFileFieldAndExpectation(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		want        []string
	}{
		{"unknown top-level key", "colour: blue\n", []string{"t.yaml", "line 8", "colour", "unknown field", "packages"}},
		{"unknown nested key", "disk: {rootSlotSise: 1GiB}\n", []string{"t.yaml", "disk.rootSlotSise", "unknown field", "rootSlotSize"}},
		{"wrong type bool", "installRecommends: sometimes\n", []string{"installRecommends", "not a boolean"}},
		{"wrong type list", "components: main\n", []string{"components", "want a list"}},
		{"bad size", "disk: {espSize: big}\n", []string{"disk.espSize", "size such as"}},
		{"impossible size", "disk: {rootSlotSize: 10MiB}\n", []string{"disk.rootSlotSize", "10MiB is impossible", "256MiB"}},
		{"unaligned size", "disk: {espSize: 100000000}\n", []string{"disk.espSize", "whole number of MiB"}},
		{"bad fs", "disk: {rootFilesystem: ext4}\n", []string{"disk.rootFilesystem", "squashfs or erofs"}},
		{"bad compression", "disk: {compression: brotli}\n", []string{"disk.compression", "zstd"}},
		{"bad level", "disk: {compressionLevel: 30}\n", []string{"disk.compressionLevel", "1 to 22"}},
		{"level for xz", "disk: {compression: xz, compressionLevel: 3}\n", []string{"disk.compressionLevel", "only applies"}},
		{"bad unit", "services: {enable: [agent]}\n", []string{"services.enable[0]", "unit name"}},
		{"root in cmdline", "kernel: {package: linux-image-amd64, cmdline: [root=/dev/sda]}\n", []string{"kernel.cmdline[0]", "set by the builder"}},
		{"k3s without sha", "k3s: {file: /tmp/k3s}\n", []string{"k3s.sha256", "64 lower-case hex"}},
		{"k3s both", "k3s: {file: /tmp/k3s, oci: rancher/k3s:v1, sha256: " + strings.Repeat("a", 64) + "}\n", []string{"k3s", "exactly one"}},
		{"overlay escapes", "overlays: [../x]\n", []string{"overlays[0]", "relative path"}},
		{"alias", "x: &a [1]\n", []string{"t.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := minimal
			if strings.HasPrefix(tc.extra, "kernel:") {
				src = strings.Replace(src, "kernel: {package: linux-image-amd64}\n", "", 1)
			}
			_, err := Parse("t.yaml", []byte(src+tc.extra))
			if err == nil {
				t.Fatalf("no error for %q", tc.extra)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestMissingRequired(t *testing.T) {
	for field, want := range map[string]string{
		"name: t\n":                              "name",
		"distribution: debian\n":                 "distribution",
		"mirror: http://deb.debian.org/debian\n": "mirror",
	} {
		_, err := Parse("t.yaml", []byte(strings.Replace(minimal, field, "", 1)))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("without %q: error %v, want one naming %s", strings.TrimSpace(field), err, want)
		}
	}
	_, err := Parse("t.yaml", []byte(strings.Replace(minimal, "systemd-boot-efi, ", "", 1)))
	if err == nil || !strings.Contains(err.Error(), "systemd-boot-efi") {
		t.Errorf("without systemd-boot-efi: %v", err)
	}
}

func TestSize(t *testing.T) {
	for in, want := range map[string]Size{"1GiB": GiB, "256MiB": 256 * MiB, "4096": 4096, "3KiB": 3 * KiB} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %v, %v; want %v", in, got, err, want)
		}
		if back, _ := ParseSize(got.String()); back != got {
			t.Errorf("round trip of %v via %q gave %v", got, got.String(), back)
		}
	}
	for _, bad := range []string{"", "1GB", "-1MiB", "1.5GiB", "99999999999TiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	if b, err := os.ReadFile("../../../profiles/debian-12.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("disk: {espSize: 1TiB}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse("fuzz.yaml", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		// A profile that loads must validate again after a round trip of
		// its resolved form and keep its digest.
		if err := p.Validate(); err != nil {
			t.Fatalf("loaded profile does not validate: %v", err)
		}
		d := p.Digest()
		p.Resolve()
		if p.Digest() != d {
			t.Fatalf("Resolve is not idempotent")
		}
	})
}
