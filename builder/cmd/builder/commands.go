package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/edgepair/edgepair/builder/internal/build"
	"github.com/edgepair/edgepair/builder/internal/hosttools"
	"github.com/edgepair/edgepair/builder/internal/inspect"
	"github.com/edgepair/edgepair/builder/internal/output"
	"github.com/edgepair/edgepair/builder/internal/profile"
	"github.com/edgepair/edgepair/builder/internal/progress"
	"github.com/urfave/cli/v2"
)

func commands() []*cli.Command {
	// seedCommand is H3's, in seed.go.
	return []*cli.Command{buildCommand(), planCommand(), inspectCommand(), seedCommand()}
}

func profileFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "profile", Aliases: []string{"p"}, Value: "profiles/debian-12.yaml", Usage: "image profile (YAML)"},
		&cli.StringFlag{Name: "repo", Value: ".", Usage: "repository root; overlay paths in the profile are relative to it"},
		&cli.StringFlag{Name: "base", Usage: "use this OCI image as the base root filesystem instead of mmdebstrap: an OCI layout dir (dir or dir@sha256:...), an image tarball or a registry reference"},
		&cli.StringFlag{Name: "agent", Usage: "prebuilt agent binary to install as /usr/bin/edgepair-agent (default: go build ./agent/cmd/agent)"},
		&cli.StringFlag{Name: "k3s", Usage: "k3s binary to install as /usr/local/bin/k3s, overriding the profile's k3s source"},
		&cli.StringFlag{Name: "formats", Value: "raw,bmap,qcow2,ova", Usage: "comma-separated output formats: raw (flash it), bmap (block map: bmaptool copy writes only the used blocks and verifies them), raw.zst (raw compressed for download; bmaptool reads it directly), qcow2 (QEMU/KVM), ova (vSphere import: EFI, streamOptimized VMDK, guestinfo properties)"},
		&cli.Int64Flag{Name: "source-date-epoch", EnvVars: []string{"SOURCE_DATE_EPOCH"}, Usage: "timestamp for every file in the image (default: the last git commit's time)"},
		&cli.StringFlag{Name: "cache", Value: ".cache/edgepair", Usage: "cache directory for base images (OCI layout) and their unpacked trees"},
	}
}

func options(c *cli.Context) (build.Options, error) {
	p, err := profile.Load(c.String("profile"))
	if err != nil {
		return build.Options{}, err
	}
	formats, err := output.ParseFormats(c.String("formats"))
	if err != nil {
		return build.Options{}, err
	}
	epoch := c.Int64("source-date-epoch")
	if !c.IsSet("source-date-epoch") {
		epoch = gitEpoch(c.String("repo"))
	}
	if epoch < 315532800 { // FAT cannot store times before 1980
		return build.Options{}, fmt.Errorf("--source-date-epoch %d: want a Unix time after 1980-01-01 (315532800)", epoch)
	}
	return build.Options{
		Profile: p, Repo: c.String("repo"), Output: c.String("output"), Cache: c.String("cache"),
		Base: c.String("base"), Agent: c.String("agent"), K3s: c.String("k3s"),
		Formats: formats, Epoch: epoch, RebuildBase: c.Bool("rebuild-base"),
		MmdebstrapVersion: mmdebstrapVersion(), Env: hosttools.Host,
	}, nil
}

func gitEpoch(repo string) int64 {
	out, err := exec.Command("git", "-C", repo, "log", "-1", "--format=%ct").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
			return n
		}
	}
	return time.Now().Unix()
}

func mmdebstrapVersion() string {
	out, err := exec.Command("mmdebstrap", "--version").Output()
	if err != nil {
		return "none"
	}
	return strings.TrimSpace(string(out))
}

func buildCommand() *cli.Command {
	return &cli.Command{
		Name:  "build",
		Usage: "build the image of a profile (as root)",
		Description: `Stages: base (mmdebstrap, cached by a key over every input, or --base),
unpack, layer (overlays, agent, k3s, enabled units), compress (squashfs),
assemble (GPT + ESP + root slot A, no loop devices, no mounts), convert,
checksums. Same inputs and SOURCE_DATE_EPOCH give a byte-identical raw image.`,
		Flags: append(profileFlags(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "dist", Usage: "output directory"},
			&cli.BoolFlag{Name: "rebuild-base", Usage: "run mmdebstrap even if the base is cached (e.g. to pick up archive updates)"},
		),
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("build takes no arguments (got %q); use --profile", c.Args().Slice())
			}
			o, err := options(c)
			if err != nil {
				return err
			}
			rep := &progress.Text{W: os.Stderr}
			o.Progress = rep
			p, err := build.NewPlan(o)
			if err != nil {
				return err
			}
			res, err := build.Run(c.Context, p)
			if err != nil {
				return err
			}
			for _, w := range res.Warnings {
				fmt.Fprintln(os.Stderr, "warning:", w)
			}
			base := "built with mmdebstrap"
			switch {
			case o.Base != "":
				base = "from " + o.Base
			case res.BaseCached:
				base = "from cache"
			}
			fmt.Fprintf(os.Stderr, "\nbuilt %s in %.1fs (base %s)\n", p.ImageName(), res.Duration.Seconds(), base)
			fmt.Fprintf(os.Stderr, "  root %s: %.1f MiB, sha256 %s\n", res.Manifest.RootFS.Type, float64(res.Manifest.RootFS.Size)/(1<<20), res.Manifest.RootFS.SHA256)
			for _, a := range res.Artifacts {
				fmt.Printf("%s\t%d\t%s\n", a.Path, a.Size, a.SHA256)
			}
			fmt.Fprintf(os.Stderr, "  checksums: %s\n", res.Sums)
			fmt.Fprintf(os.Stderr, "  stages:")
			for _, t := range rep.Timings() {
				fmt.Fprintf(os.Stderr, " %s=%.1fs", t.Stage, t.Duration.Seconds())
			}
			fmt.Fprintln(os.Stderr)
			return nil
		},
	}
}

func planCommand() *cli.Command {
	return &cli.Command{
		Name:  "plan",
		Usage: "print what build would do (resolved profile, mmdebstrap command, disk layout), without doing it",
		Flags: append(profileFlags(), &cli.BoolFlag{Name: "profile-json", Usage: "print the resolved profile as JSON instead"}),
		Action: func(c *cli.Context) error {
			o, err := options(c)
			if err != nil {
				return err
			}
			if c.Bool("profile-json") {
				_, err := os.Stdout.Write(o.Profile.Canonical())
				return err
			}
			p, err := build.NewPlan(o)
			if err != nil {
				return err
			}
			fmt.Print(p.Render())
			return nil
		},
	}
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show an image's partitions, slots, profile digest, kernel and packages (reads the raw file, mounts nothing)",
		ArgsUsage: "IMAGE.raw",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "packages", Usage: "list every installed package and version"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("inspect takes one argument, the raw image (e.g. dist/edgepair-debian-12.raw)")
			}
			img, err := inspect.Read(c.Args().First())
			if err != nil {
				return err
			}
			if c.Bool("json") {
				b, err := json.MarshalIndent(img, "", "  ")
				if err != nil {
					return err
				}
				fmt.Println(string(b))
				return nil
			}
			var m build.Manifest
			if err := json.Unmarshal(img.Manifest, &m); err != nil {
				return fmt.Errorf("manifest: %w", err)
			}
			fmt.Printf("image:    %s (%d bytes)\n", filepath.Base(img.Path), img.Size)
			fmt.Printf("profile:  %s, digest %s\n", m.Name, m.ProfileDigest)
			fmt.Printf("built:    SOURCE_DATE_EPOCH %d (%s)\n", m.SourceDateEpoch, time.Unix(m.SourceDateEpoch, 0).UTC().Format(time.RFC3339))
			fmt.Printf("base:     %s %s\n", m.Base.Digest, m.Base.Ref)
			fmt.Printf("kernel:   %s\n", m.Kernel)
			fmt.Printf("cmdline:  %s\n", m.Cmdline)
			fmt.Printf("root:     %s/%s, %d bytes, sha256 %s\n", m.RootFS.Type, m.RootFS.Compression, m.RootFS.Size, m.RootFS.SHA256)
			fmt.Printf("disk:     GPT %s\n", img.DiskGUID)
			for _, p := range img.Partitions {
				slot := ""
				for k, g := range m.Slots {
					if strings.EqualFold(g, p.GUID) {
						slot = " slot " + strings.ToUpper(k)
						if strings.Contains(strings.ToLower(m.Cmdline), strings.ToLower(g)) {
							slot += " (boots)"
						}
					}
				}
				fmt.Printf("  %d %-16s %-36s %s %s%s\n", p.Index, p.Name, p.GUID, p.Type, profile.Size(p.Size), slot)
			}
			fmt.Printf("packages: %d installed", len(m.Packages))
			for _, k := range []string{"systemd", "postgresql-15", "postgresql-16", "keepalived", "cloud-init", "openssh-server"} {
				if v, ok := m.Packages[k]; ok {
					fmt.Printf(", %s %s", k, v)
				}
			}
			fmt.Println()
			if c.Bool("packages") {
				for _, l := range build.SortedPackages(m.Packages) {
					fmt.Println("  " + l)
				}
			}
			return nil
		},
	}
}
