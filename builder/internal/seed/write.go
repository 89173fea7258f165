package seed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Output file names inside each node's directory.
const (
	ISOFile       = "seed.iso"      // NoCloud ISO9660, label cidata
	FATFile       = "seed-usb.img"  // NoCloud FAT32, label CIDATA
	GuestInfoFile = "guestinfo.env" // vSphere guestinfo as key=value lines (OVA properties, govc -e)
	GuestInfoVMX  = "guestinfo.vmx" // the same as .vmx/extraConfig lines (key = "value")
	NoCloudDir    = "nocloud"       // the three NoCloud files, plain
)

// Artifact is one written file.
type Artifact struct {
	Node string // "" for the pair record
	Kind string // record, iso, fat, guestinfo, meta-data, user-data, network-config
	Path string
}

// Write renders the record and writes everything into outDir: the pair
// record (0600) and per node <outDir>/<node>/ with seed.iso, seed-usb.img,
// guestinfo.env, guestinfo.vmx and nocloud/{meta-data,user-data,network-config}. Files
// with secrets are 0600, the node directories 0700. Timestamps inside the
// images are the record's creation time, so the output is a function of
// the record alone.
func Write(ctx context.Context, r *Record, outDir string) ([]Artifact, error) {
	seeds, err := Render(r)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, fmt.Errorf("seed output: %w", err)
	}
	var arts []Artifact
	rec, err := r.Marshal()
	if err != nil {
		return nil, err
	}
	recPath := filepath.Join(outDir, RecordFile)
	if err := writeSecret(recPath, rec); err != nil {
		return nil, err
	}
	arts = append(arts, Artifact{Kind: "record", Path: recPath})
	for _, ns := range seeds {
		if err := ctx.Err(); err != nil {
			return arts, err
		}
		dir := filepath.Join(outDir, ns.Node)
		if err := os.MkdirAll(filepath.Join(dir, NoCloudDir), 0o700); err != nil {
			return arts, fmt.Errorf("seed output: %w", err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return arts, fmt.Errorf("seed output: %w", err)
		}
		for _, f := range seedFiles(ns) {
			p := filepath.Join(dir, NoCloudDir, f.name)
			if err := writeSecret(p, f.data); err != nil {
				return arts, err
			}
			arts = append(arts, Artifact{Node: ns.Node, Kind: f.name, Path: p})
		}
		iso := filepath.Join(dir, ISOFile)
		if err := WriteISO(iso, ns, r.Created); err != nil {
			return arts, err
		}
		arts = append(arts, Artifact{Node: ns.Node, Kind: "iso", Path: iso})
		fat := filepath.Join(dir, FATFile)
		if err := WriteFAT(fat, ns, r.Created); err != nil {
			return arts, err
		}
		arts = append(arts, Artifact{Node: ns.Node, Kind: "fat", Path: fat})
		gi := filepath.Join(dir, GuestInfoFile)
		if err := writeSecret(gi, GuestInfoEnv(ns)); err != nil {
			return arts, err
		}
		arts = append(arts, Artifact{Node: ns.Node, Kind: "guestinfo", Path: gi})
		gv := filepath.Join(dir, GuestInfoVMX)
		if err := writeSecret(gv, GuestInfoVMXLines(ns)); err != nil {
			return arts, err
		}
		arts = append(arts, Artifact{Node: ns.Node, Kind: "guestinfo-vmx", Path: gv})
	}
	return arts, nil
}

// GuestInfoEnv renders the guestinfo values as key=value lines (no
// quoting needed: the values are base64 and fixed words), ready to paste
// into the OVA's properties at deployment or to pass to govc:
//
//	govc vm.change -vm VM $(sed 's/^/-e /' guestinfo.env)
func GuestInfoEnv(ns NodeSeed) []byte {
	var b strings.Builder
	for _, kv := range ns.GuestInfo {
		fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
	}
	return []byte(b.String())
}

// GuestInfoVMXLines renders the guestinfo values as .vmx / extraConfig
// lines (`key = "value"`), with a comment on how to apply them.
func GuestInfoVMXLines(ns NodeSeed) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# edgepair seed for node %s (vSphere guestinfo, cloud-init VMware datasource).\n", ns.Node)
	b.WriteString("# Add these lines to the VM's .vmx or Configuration Parameters (extraConfig), or:\n")
	b.WriteString("#   govc vm.change -vm VM")
	for _, kv := range ns.GuestInfo {
		fmt.Fprintf(&b, " -e %s=...", kv.Key)
	}
	b.WriteString("\n# The values hold the pair's secrets.\n")
	for _, kv := range ns.GuestInfo {
		fmt.Fprintf(&b, "%s = %q\n", kv.Key, kv.Value)
	}
	return []byte(b.String())
}

// writeSecret writes data to path with mode 0600, replacing any earlier
// file (created afresh so a looser mode is never inherited).
func writeSecret(path string, data []byte) error {
	if err := removeForRewrite(path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("seed output: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("seed output: %w", err)
	}
	return f.Close()
}
