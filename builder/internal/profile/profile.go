// Package profile loads, validates and resolves edgepair image profiles
// (profiles/*.yaml). Decoding is strict: an unknown key, a value of the wrong
// type or an impossible size is an error that names the file, the field and
// what is expected.
package profile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// Profile is one image profile as written in YAML.
type Profile struct {
	// Name is the image name, used in output file names (edgepair-<name>.raw).
	Name string `yaml:"name" json:"name"`
	// Description is free text shown by `builder inspect`.
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	// Distribution is "debian" or "ubuntu".
	Distribution string `yaml:"distribution" json:"distribution"`
	// Suite is the release code name (bookworm, noble).
	Suite string `yaml:"suite" json:"suite"`
	// Mirror is the archive URL mmdebstrap installs from.
	Mirror string `yaml:"mirror" json:"mirror"`
	// Components of the archive (main, universe, ...). Default: [main].
	Components []string `yaml:"components,omitempty" json:"components"`
	// Variant is the mmdebstrap variant. Default: minbase.
	Variant string `yaml:"variant,omitempty" json:"variant"`
	// InstallRecommends makes apt install Recommends. Default: false.
	InstallRecommends bool `yaml:"installRecommends,omitempty" json:"installRecommends"`
	// Packages installed in addition to the variant's.
	Packages []string `yaml:"packages" json:"packages"`
	// Kernel describes the kernel package and its command line.
	Kernel Kernel `yaml:"kernel" json:"kernel"`
	// Services disabled and enabled in the image.
	Services Services `yaml:"services,omitempty" json:"services"`
	// BaseOverlays are copied into the chroot before the initramfs is built
	// (they are part of the cached base). Paths are relative to the repository.
	BaseOverlays []string `yaml:"baseOverlays,omitempty" json:"baseOverlays"`
	// Overlays are copied onto the root after the base (cheap layer, not cached).
	Overlays []string `yaml:"overlays,omitempty" json:"overlays"`
	// K3s is the optional k3s payload.
	K3s *K3s `yaml:"k3s,omitempty" json:"k3s,omitempty"`
	// Disk is the disk layout.
	Disk Disk `yaml:"disk,omitempty" json:"disk"`
}

// Kernel is the kernel package, the modules the initramfs needs and the
// kernel command line.
type Kernel struct {
	Package string `yaml:"package" json:"package"`
	// InitramfsModules are added to /etc/initramfs-tools/modules.
	InitramfsModules []string `yaml:"initramfsModules,omitempty" json:"initramfsModules"`
	// Cmdline is appended after root=PARTUUID=... rootfstype=... ro.
	Cmdline []string `yaml:"cmdline,omitempty" json:"cmdline"`
}

// Services lists systemd units to disable or enable.
type Services struct {
	Disable []string `yaml:"disable,omitempty" json:"disable"`
	Enable  []string `yaml:"enable,omitempty" json:"enable"`
}

// K3s is where the k3s binary (and optional air-gap images) come from.
// Exactly one of File and OCI is set.
type K3s struct {
	// File is a path to a k3s binary on the build host.
	File string `yaml:"file,omitempty" json:"file,omitempty"`
	// OCI is an image reference (rancher/k3s:v1.31.4-k3s1) holding Path.
	OCI string `yaml:"oci,omitempty" json:"oci,omitempty"`
	// Path inside the OCI image. Default: /bin/k3s.
	Path string `yaml:"path,omitempty" json:"path,omitempty"`
	// SHA256 pins the binary (hex). Required.
	SHA256 string `yaml:"sha256" json:"sha256"`
	// AirgapImages are image tarballs copied to /var/lib/rancher/k3s/agent/images/.
	AirgapImages []AirgapImage `yaml:"airgapImages,omitempty" json:"airgapImages,omitempty"`
}

// AirgapImage is one pinned air-gap image tarball.
type AirgapImage struct {
	File   string `yaml:"file" json:"file"`
	SHA256 string `yaml:"sha256" json:"sha256"`
}

// Disk is the partition layout of the image.
type Disk struct {
	// ESPSize is the EFI system partition size. Default: 300MiB. (Above
	// 260MiB FAT32 uses 4 KiB clusters; at 256MiB go-diskfs wrote the
	// kernel and initrd with 512-byte clusters 8x slower.)
	ESPSize Size `yaml:"espSize,omitempty" json:"espSize"`
	// RootSlotSize is the size of each of the two root slots. Default: 1GiB.
	RootSlotSize Size `yaml:"rootSlotSize,omitempty" json:"rootSlotSize"`
	// RootFilesystem is squashfs or erofs. Default: squashfs.
	RootFilesystem string `yaml:"rootFilesystem,omitempty" json:"rootFilesystem"`
	// Compression for the root filesystem: zstd, xz, gzip, lz4. Default: zstd.
	Compression string `yaml:"compression,omitempty" json:"compression"`
	// CompressionLevel for zstd (1-22) or gzip (1-9). Default: 3 for zstd
	// (measured: 17x faster than mksquashfs's default 15 for 8% more
	// bytes, see BENCHMARKS.md), 9 for gzip.
	CompressionLevel int `yaml:"compressionLevel,omitempty" json:"compressionLevel,omitempty"`
	// DataLabel is the GPT label (and ext4 label) of the data partition that
	// systemd-repart creates on first boot. Default: edgepair-data.
	DataLabel string `yaml:"dataLabel,omitempty" json:"dataLabel"`
	// DataMinSize is the smallest data partition repart accepts. Default: 1GiB.
	DataMinSize Size `yaml:"dataMinSize,omitempty" json:"dataMinSize"`
}

// Load reads, strictly decodes, resolves and validates the profile at path.
func Load(path string) (*Profile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	return Parse(path, b)
}

// Parse decodes b (named name in errors), fills defaults and validates.
func Parse(name string, b []byte) (*Profile, error) {
	var p Profile
	if err := decodeStrict(name, b, &p); err != nil {
		return nil, err
	}
	p.Resolve()
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &p, nil
}

// Resolve fills every default in place, so the resolved profile is the whole
// truth about the image (golden files show it).
func (p *Profile) Resolve() {
	if len(p.Components) == 0 {
		p.Components = []string{"main"}
	}
	if p.Variant == "" {
		p.Variant = "minbase"
	}
	if p.Kernel.InitramfsModules == nil {
		p.Kernel.InitramfsModules = []string{"squashfs", "overlay", "ext4", "loop"}
	}
	if p.Services.Disable == nil {
		p.Services.Disable = []string{}
	}
	if p.Services.Enable == nil {
		p.Services.Enable = []string{}
	}
	if p.BaseOverlays == nil {
		p.BaseOverlays = []string{}
	}
	if p.Overlays == nil {
		p.Overlays = []string{}
	}
	if p.Kernel.Cmdline == nil {
		p.Kernel.Cmdline = []string{}
	}
	if p.K3s != nil && p.K3s.OCI != "" && p.K3s.Path == "" {
		p.K3s.Path = "/bin/k3s"
	}
	d := &p.Disk
	if d.ESPSize == 0 {
		d.ESPSize = 300 * MiB
	}
	if d.RootSlotSize == 0 {
		d.RootSlotSize = 1 * GiB
	}
	if d.RootFilesystem == "" {
		d.RootFilesystem = "squashfs"
	}
	if d.Compression == "" {
		d.Compression = "zstd"
	}
	if d.CompressionLevel == 0 {
		switch d.Compression {
		case "zstd":
			d.CompressionLevel = 3
		case "gzip":
			d.CompressionLevel = 9
		}
	}
	if d.DataLabel == "" {
		d.DataLabel = "edgepair-data"
	}
	if d.DataMinSize == 0 {
		d.DataMinSize = 1 * GiB
	}
}

// Digest is the sha256 of the resolved profile's canonical JSON form. It is
// stored in the image and shown by `builder inspect`.
func (p *Profile) Digest() string {
	b, err := json.Marshal(p)
	if err != nil {
		// json.Marshal of this plain struct cannot fail; keep the digest
		// distinguishable rather than panicking.
		return "invalid:" + err.Error()
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Canonical returns the resolved profile as indented JSON (golden files).
func (p *Profile) Canonical() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	_ = enc.Encode(p) // cannot fail for this struct
	return buf.Bytes()
}

// FieldError is a validation error on one field, named by its YAML path.
type FieldError struct {
	Field string // YAML path, e.g. disk.rootSlotSize
	Msg   string // what is wrong and what is expected
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func ferr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks a resolved profile.
func (p *Profile) Validate() error {
	if !isName(p.Name) {
		return ferr("name", "%q is not a valid name; want lower-case letters, digits, '.', '-' (e.g. debian-12)", p.Name)
	}
	switch p.Distribution {
	case "debian", "ubuntu":
	default:
		return ferr("distribution", "%q is not supported; want debian or ubuntu", p.Distribution)
	}
	if !isName(p.Suite) {
		return ferr("suite", "%q is not a release code name; want e.g. bookworm or noble", p.Suite)
	}
	if !strings.HasPrefix(p.Mirror, "http://") && !strings.HasPrefix(p.Mirror, "https://") && !strings.HasPrefix(p.Mirror, "file://") {
		return ferr("mirror", "%q is not an archive URL; want http://, https:// or file://", p.Mirror)
	}
	for i, c := range p.Components {
		if !isName(c) {
			return ferr(fmt.Sprintf("components[%d]", i), "%q is not an archive component; want e.g. main or universe", c)
		}
	}
	switch p.Variant {
	case "minbase", "essential", "required", "important", "standard", "debootstrap", "buildd", "apt":
	default:
		return ferr("variant", "%q is not an mmdebstrap variant; want minbase, essential, apt, required, important or standard", p.Variant)
	}
	if len(p.Packages) == 0 {
		return ferr("packages", "empty; list at least the kernel, systemd and systemd-boot-efi")
	}
	seen := map[string]bool{}
	for i, pk := range p.Packages {
		if !isPackage(pk) {
			return ferr(fmt.Sprintf("packages[%d]", i), "%q is not a Debian package name", pk)
		}
		if seen[pk] {
			return ferr(fmt.Sprintf("packages[%d]", i), "%q is listed twice", pk)
		}
		seen[pk] = true
	}
	if p.Kernel.Package == "" {
		return ferr("kernel.package", "missing; want the kernel package, e.g. linux-image-amd64")
	}
	if !seen[p.Kernel.Package] {
		return ferr("kernel.package", "%q is not in packages; add it there", p.Kernel.Package)
	}
	for _, need := range []string{"systemd", "systemd-boot-efi", "initramfs-tools"} {
		if !seen[need] {
			return ferr("packages", "must contain %s (the image boots with systemd-boot, systemd and an initramfs-tools initramfs)", need)
		}
	}
	for i, m := range p.Kernel.InitramfsModules {
		if !isName(strings.ReplaceAll(m, "_", "-")) {
			return ferr(fmt.Sprintf("kernel.initramfsModules[%d]", i), "%q is not a kernel module name", m)
		}
	}
	for i, a := range p.Kernel.Cmdline {
		if a == "" || strings.ContainsAny(a, " \t\n") {
			return ferr(fmt.Sprintf("kernel.cmdline[%d]", i), "%q must be one non-empty argument without spaces", a)
		}
		if strings.HasPrefix(a, "root=") || strings.HasPrefix(a, "rootfstype=") {
			return ferr(fmt.Sprintf("kernel.cmdline[%d]", i), "%q is set by the builder (root slot A); remove it", a)
		}
	}
	for i, u := range p.Services.Disable {
		if !isUnit(u) {
			return ferr(fmt.Sprintf("services.disable[%d]", i), "%q is not a unit name; want e.g. postgresql.service", u)
		}
	}
	for i, u := range p.Services.Enable {
		if !isUnit(u) {
			return ferr(fmt.Sprintf("services.enable[%d]", i), "%q is not a unit name; want e.g. edgepair-agent.service", u)
		}
	}
	for i, o := range append(append([]string{}, p.BaseOverlays...), p.Overlays...) {
		if o == "" || strings.HasPrefix(o, "/") || strings.Contains(o, "..") {
			f := fmt.Sprintf("overlays[%d]", i-len(p.BaseOverlays))
			if i < len(p.BaseOverlays) {
				f = fmt.Sprintf("baseOverlays[%d]", i)
			}
			return ferr(f, "%q must be a relative path inside the repository", o)
		}
	}
	if k := p.K3s; k != nil {
		switch {
		case k.File == "" && k.OCI == "":
			return ferr("k3s", "set one of file or oci")
		case k.File != "" && k.OCI != "":
			return ferr("k3s", "file and oci are both set; want exactly one")
		}
		if k.File != "" && k.Path != "" {
			return ferr("k3s.path", "only applies to oci")
		}
		if !isSHA256(k.SHA256) {
			return ferr("k3s.sha256", "%q is not a sha256; want 64 lower-case hex digits (sha256sum of the binary)", k.SHA256)
		}
		for i, a := range k.AirgapImages {
			if a.File == "" {
				return ferr(fmt.Sprintf("k3s.airgapImages[%d].file", i), "missing; want a path to an image tarball")
			}
			if !isSHA256(a.SHA256) {
				return ferr(fmt.Sprintf("k3s.airgapImages[%d].sha256", i), "%q is not a sha256; want 64 lower-case hex digits", a.SHA256)
			}
		}
	}
	d := p.Disk
	if d.ESPSize < 64*MiB || d.ESPSize > 4*GiB || d.ESPSize%MiB != 0 {
		return ferr("disk.espSize", "%s is impossible; want a whole number of MiB between 64MiB and 4GiB (FAT32 with a kernel and initrd per slot)", d.ESPSize)
	}
	if d.RootSlotSize < 256*MiB || d.RootSlotSize > 64*GiB || d.RootSlotSize%MiB != 0 {
		return ferr("disk.rootSlotSize", "%s is impossible; want a whole number of MiB between 256MiB and 64GiB", d.RootSlotSize)
	}
	switch d.RootFilesystem {
	case "squashfs", "erofs":
	default:
		return ferr("disk.rootFilesystem", "%q is not supported; want squashfs or erofs", d.RootFilesystem)
	}
	switch d.Compression {
	case "zstd", "xz", "gzip", "lz4":
	default:
		return ferr("disk.compression", "%q is not supported; want zstd, xz, gzip or lz4", d.Compression)
	}
	switch {
	case d.Compression == "zstd" && (d.CompressionLevel < 1 || d.CompressionLevel > 22):
		return ferr("disk.compressionLevel", "%d is out of range for zstd; want 1 to 22", d.CompressionLevel)
	case d.Compression == "gzip" && (d.CompressionLevel < 1 || d.CompressionLevel > 9):
		return ferr("disk.compressionLevel", "%d is out of range for gzip; want 1 to 9", d.CompressionLevel)
	case d.Compression != "zstd" && d.Compression != "gzip" && d.CompressionLevel != 0:
		return ferr("disk.compressionLevel", "only applies to zstd and gzip, not %s", d.Compression)
	}
	if d.RootFilesystem == "erofs" && d.Compression != "lz4" && d.Compression != "xz" {
		return ferr("disk.compression", "%q is not available for erofs here; want lz4 or xz", d.Compression)
	}
	if !isName(d.DataLabel) || len(d.DataLabel) > 36 {
		return ferr("disk.dataLabel", "%q is not a valid label; want at most 36 characters of [a-z0-9.-]", d.DataLabel)
	}
	if d.DataMinSize < 64*MiB || d.DataMinSize%MiB != 0 {
		return ferr("disk.dataMinSize", "%s is impossible; want a whole number of MiB, at least 64MiB", d.DataMinSize)
	}
	return nil
}

func isName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case (r == '-' || r == '.') && i > 0:
		default:
			return false
		}
	}
	return true
}

func isPackage(s string) bool {
	if len(s) < 2 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case (r == '-' || r == '.' || r == '+') && i > 0:
		default:
			return false
		}
	}
	return true
}

func isUnit(s string) bool {
	for _, suf := range []string{".service", ".socket", ".timer", ".target", ".mount", ".path"} {
		if strings.HasSuffix(s, suf) && len(s) > len(suf) && !strings.ContainsAny(s, "/ \t") {
			return true
		}
	}
	return false
}

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}
