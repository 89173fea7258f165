// Package build turns a resolved profile into an image: it plans the stages
// (base root filesystem, assembly layer, compression, disk, outputs) and runs
// them, reporting progress through a progress.Reporter.
package build

import (
	"fmt"
	"github.com/edgepair/edgepair/builder/internal/ova"
	"path/filepath"
	"sort"
	"strings"

	"github.com/edgepair/edgepair/builder/internal/disk"
	"github.com/edgepair/edgepair/builder/internal/hosttools"
	"github.com/edgepair/edgepair/builder/internal/profile"
	"github.com/edgepair/edgepair/builder/internal/progress"
	"github.com/edgepair/edgepair/builder/internal/rootfs"
	"github.com/edgepair/edgepair/builder/internal/rootimg"
)

// Options are the inputs of one build besides the profile.
type Options struct {
	Profile *profile.Profile
	// Repo is the directory profile paths (overlays) are relative to.
	Repo string
	// Output is the directory the images and SHA256SUMS go to.
	Output string
	// Cache holds base images (OCI layout) and their unpacked trees.
	Cache string
	// Base is an OCI reference used instead of mmdebstrap (optional).
	Base string
	// RebuildBase runs mmdebstrap even when the base is cached.
	RebuildBase bool
	// Agent is a prebuilt agent binary; empty: go build ./agent/cmd/agent.
	Agent string
	// K3s is a k3s binary overriding the profile's k3s source (optional).
	K3s string
	// Formats to write (raw, qcow2, ova).
	Formats []string
	// Epoch is SOURCE_DATE_EPOCH: every timestamp in the image.
	Epoch int64
	// MmdebstrapVersion is part of the base cache key (mmdebstrap --version).
	MmdebstrapVersion string
	// Processors for the root filesystem compression (0: all).
	Processors int

	Env      hosttools.Env
	Progress progress.Reporter
}

// Plan is what a build will do, fully determined by the options: rendered
// in golden files and by `builder plan`.
type Plan struct {
	O          Options
	Spec       *rootfs.Spec
	BaseKey    string
	Layout     disk.Layout
	Partitions []disk.PartitionPlan
	ImageSize  int64
	Cmdline    string
	RootImage  rootimg.Options
}

// ImageName is the output base name, edgepair-<profile name>.
func (p *Plan) ImageName() string { return "edgepair-" + p.O.Profile.Name }

// OVASpec is the virtual machine the OVA declares: 2 vCPUs and 4 GiB (k3s
// server and PostgreSQL on one node), EFI firmware, VMXNET3 on one network,
// hardware version 15 and guest ids that ESXi 6.7 U2 and later know.
func (p *Plan) OVASpec() ova.Spec {
	pr := p.O.Profile
	s := ova.Spec{Name: p.ImageName(), Product: "edgepair", Version: pr.Name + " " + pr.Digest()[:12],
		Annotation: "edgepair appliance (" + pr.Name + "): give each node its seed (builder seed) through the guestinfo properties or as a CD-ROM.",
		CPUs:       2, MemoryMiB: 4096, HardwareVersion: "vmx-13"}
	switch pr.Distribution {
	case "ubuntu":
		s.GuestOS, s.GuestOSID = "ubuntu64Guest", 94
	default:
		s.GuestOS, s.GuestOSID = "debian10_64Guest", 96
	}
	return s
}

// NewPlan computes the plan.
func NewPlan(o Options) (*Plan, error) {
	if o.Profile == nil {
		return nil, fmt.Errorf("build: no profile")
	}
	repo, err := filepath.Abs(o.Repo)
	if err != nil {
		return nil, err
	}
	o.Repo = repo
	if o.Cache != "" {
		if o.Cache, err = filepath.Abs(o.Cache); err != nil {
			return nil, err
		}
	}
	spec, err := rootfs.NewSpec(o.Profile, o.Repo)
	if err != nil {
		return nil, err
	}
	pr := o.Profile
	l := disk.Layout{
		ESPSize:  int64(pr.Disk.ESPSize),
		SlotSize: int64(pr.Disk.RootSlotSize),
		Seed:     fmt.Sprintf("%s/%d", pr.Digest(), o.Epoch),
	}
	parts, size, err := l.Plan()
	if err != nil {
		return nil, err
	}
	g := l.GUIDs()
	cmd := append([]string{"root=PARTUUID=" + strings.ToLower(g.SlotA), "rootfstype=" + pr.Disk.RootFilesystem, "ro"}, pr.Kernel.Cmdline...)
	return &Plan{
		O:          o,
		Spec:       spec,
		BaseKey:    spec.Key(o.MmdebstrapVersion),
		Layout:     l,
		Partitions: parts,
		ImageSize:  size,
		Cmdline:    strings.Join(cmd, " "),
		RootImage: rootimg.Options{
			Type: pr.Disk.RootFilesystem, Compression: pr.Disk.Compression, Level: pr.Disk.CompressionLevel,
			Epoch: o.Epoch, Processors: o.Processors,
		},
	}, nil
}

// LoaderConf is the systemd-boot loader.conf.
func (p *Plan) LoaderConf() string {
	return "default edgepair-a.conf\ntimeout 0\neditor no\nconsole-mode keep\n"
}

// LoaderEntry is the boot entry for root slot A.
func (p *Plan) LoaderEntry() string {
	return fmt.Sprintf("title edgepair %s (slot A)\nlinux /edgepair/a/vmlinuz\ninitrd /edgepair/a/initrd.img\noptions %s\n",
		p.O.Profile.Name, p.Cmdline)
}

// Render writes the plan as text (stable: golden files compare it).
func (p *Plan) Render() string {
	var b strings.Builder
	pr := p.O.Profile
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# build plan for %s (profile digest %s)\n", pr.Name, pr.Digest())
	w("SOURCE_DATE_EPOCH=%d\n\n", p.O.Epoch)
	w("## 1. base root filesystem (cached, key sha256 over every input)\n")
	if p.O.Base != "" {
		w("from OCI image %s (mmdebstrap is not run)\n", p.O.Base)
	} else {
		w("cache key: %s (mmdebstrap %q)\n", p.BaseKey, p.O.MmdebstrapVersion)
		w("mmdebstrap")
		for _, a := range p.Spec.MmdebstrapArgs("$CACHE/tmp/base.tar", "$WORK/customize.sh") {
			a = strings.ReplaceAll(a, filepath.Clean(p.O.Repo)+"/", "")
			w(" \\\n  %s", shQuote(a))
		}
		w("\n\ncustomize.sh:\n%s\n", indent(p.Spec.CustomizeScript))
	}
	w("## 2. assembly layer (not cached, cheap)\n")
	w("unpack base into $CACHE/trees/<image digest> (once), hard-link copy to $WORK/root\n")
	for _, o := range pr.Overlays {
		w("overlay %s/ -> /\n", o)
	}
	if p.O.Agent != "" {
		w("agent: %s -> /usr/bin/edgepair-agent\n", p.O.Agent)
	} else {
		w("agent: CGO_ENABLED=0 go build -trimpath ./agent/cmd/agent -> /usr/bin/edgepair-agent\n")
	}
	switch {
	case p.O.K3s != "":
		w("k3s: file %s (--k3s) -> /usr/local/bin/k3s\n", p.O.K3s)
	case pr.K3s != nil && pr.K3s.File != "":
		w("k3s: file %s sha256 %s -> /usr/local/bin/k3s\n", pr.K3s.File, pr.K3s.SHA256)
	case pr.K3s != nil:
		w("k3s: %s from OCI image %s sha256 %s -> /usr/local/bin/k3s\n", pr.K3s.Path, pr.K3s.OCI, pr.K3s.SHA256)
	default:
		w("k3s: none in this profile\n")
	}
	if pr.K3s != nil {
		for _, a := range pr.K3s.AirgapImages {
			w("k3s air-gap images: %s sha256 %s -> /var/lib/rancher/k3s/agent/images/\n", a.File, a.SHA256)
		}
	}
	units := append([]string(nil), pr.Services.Enable...)
	sort.Strings(units)
	w("enable (symlinks per [Install] WantedBy=): %s\n\n", strings.Join(units, " "))
	w("## 3. root filesystem image\n")
	prog, args, _ := rootimg.Command("$WORK/root", "$WORK/root."+p.RootImage.Type, p.RootImage)
	w("%s %s\n\n", prog, strings.Join(args, " "))
	w("## 4. disk (one file, no loop devices, no mounts)\n")
	w("size %d bytes, GPT disk GUID %s\n", p.ImageSize, p.Layout.GUIDs().Disk)
	for _, pt := range p.Partitions {
		w("%d %-16s type %s guid %s sectors %d-%d (%s)\n", pt.Index, pt.Name, pt.Type, pt.GUID, pt.Start, pt.End, profile.Size(pt.Size))
	}
	w("data partition: not in the image; systemd-repart creates %q (ext4, min %s, rest of the disk) on first boot\n", pr.Disk.DataLabel, pr.Disk.DataMinSize)
	w("ESP files:\n  EFI/BOOT/BOOTX64.EFI <- /usr/lib/systemd/boot/efi/systemd-bootx64.efi\n")
	w("  edgepair/a/vmlinuz <- /boot/vmlinuz-<version>\n  edgepair/a/initrd.img <- /boot/initrd.img-<version>\n  edgepair/manifest.json\n")
	w("  loader/loader.conf:\n%s", indent(p.LoaderConf()))
	w("  loader/entries/edgepair-a.conf:\n%s\n", indent(p.LoaderEntry()))
	w("## 5. outputs in $OUT\n")
	for _, f := range p.O.Formats {
		w("%s.%s\n", p.ImageName(), f)
	}
	w("SHA256SUMS\n")
	return b.String()
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString("    " + l)
		}
	}
	return b.String()
}

func shQuote(s string) string {
	if strings.ContainsAny(s, " \t\"'$\\|&;<>()*") {
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return s
}
