package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/edgepair/edgepair/builder/internal/seed"
)

// seedCommand is `builder seed`: per-node cloud-init seeds for one pair.
func seedCommand() *cli.Command {
	return &cli.Command{
		Name:      "seed",
		Usage:     "write the cloud-init seeds (ISO, USB image, vSphere guestinfo) that make two machines a pair",
		ArgsUsage: " ",
		Description: `seed reads a short pair file (or the same as flags), generates the pair's
secrets once and writes, per node, into OUTPUT/<node>/:
  seed.iso        NoCloud ISO9660 labelled cidata: attach as a CD-ROM
  seed-usb.img    NoCloud FAT32 labelled CIDATA: dd onto a USB stick
  guestinfo.env   vSphere guestinfo.metadata/userdata (gzip+base64), key=value
  guestinfo.vmx   the same as .vmx / extraConfig lines
  nocloud/        meta-data, user-data, network-config as plain files
and OUTPUT/pair.record.yaml, the pair's secrets (mode 0600, keep it safe):
--from-record rebuilds the same seeds from it byte for byte.

  builder seed --pair-file pair.yaml --output dist/seeds/store-17
  builder seed --name store-17 --node node-a=198.18.0.11/24 \
      --node node-b=198.18.0.12/24,mac=52:54:00:00:00:12 --interface eth0 \
      --vip 198.18.0.10 --gateway 198.18.0.1 --ssh-key @$HOME/.ssh/id_ed25519.pub -o out
  builder seed --from-record out/pair.record.yaml --output out

Pair file fields: pair, nodes[2]{name, address, mac, hostname, interface,
link, linkMAC, linkInterface}, interface, linkInterface, vip, vrrpID,
gateway, witness, dns, searchDomains, domain, user, sshAuthorizedKeys,
initialPrimary (see builder/internal/seed/testdata/pair-full.yaml).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "pair-file", Aliases: []string{"f"}, Usage: "pair file (YAML); flags below override its fields"},
			&cli.StringFlag{Name: "from-record", Usage: "rebuild the seeds of an existing pair from its pair.record.yaml (same secrets, same bytes)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "output directory"},
			&cli.BoolFlag{Name: "force", Usage: "replace an existing pair record in the output directory with a NEW pair (new secrets)"},
			&cli.Int64Flag{Name: "source-date-epoch", EnvVars: []string{"SOURCE_DATE_EPOCH"}, Usage: "creation time of a new pair (Unix seconds) for every timestamp in the images (default: now)"},
			&cli.StringFlag{Name: "name", Usage: "pair name (DNS label)"},
			&cli.StringSliceFlag{Name: "node", Usage: "a node as NAME=ADDRESS/PREFIX[,mac=MAC][,link=ADDRESS/PREFIX][,linkMAC=MAC][,linkInterface=IF][,interface=IF][,hostname=H]; give it twice, initial primary first"},
			&cli.StringFlag{Name: "interface", Usage: "LAN NIC name on both nodes (renamed to this when a node has mac=)"},
			&cli.StringFlag{Name: "link-interface", Usage: "direct-link NIC name on both nodes"},
			&cli.StringFlag{Name: "vip", Usage: "virtual IP in the nodes' subnet"},
			&cli.IntFlag{Name: "vrrp-id", Usage: "VRRP router id 1..255 (default: derived from the pair name)"},
			&cli.StringFlag{Name: "gateway", Usage: "LAN default gateway (also the default witness)"},
			&cli.StringFlag{Name: "witness", Usage: "witness address both nodes ping (default: the gateway)"},
			&cli.StringSliceFlag{Name: "dns", Usage: "name server address (repeatable)"},
			&cli.StringSliceFlag{Name: "search-domain", Usage: "DNS search domain (repeatable)"},
			&cli.StringFlag{Name: "domain", Usage: "domain for the nodes' FQDNs"},
			&cli.StringFlag{Name: "user", Usage: "operator account (default edgepair)"},
			&cli.StringSliceFlag{Name: "ssh-key", Usage: "OpenSSH public key line, or @FILE with keys (repeatable)"},
			&cli.StringFlag{Name: "initial-primary", Usage: "node that runs initdb on first boot (default: the first node)"},
		},
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return fmt.Errorf("seed takes no arguments, got %q (use --pair-file)", c.Args().Slice())
			}
			var created time.Time
			if e := c.Int64("source-date-epoch"); e > 0 {
				created = time.Unix(e, 0)
			}
			r, arts, err := seed.Generate(c.Context, seed.Options{
				PairFile:   c.String("pair-file"),
				FromRecord: c.String("from-record"),
				Output:     c.String("output"),
				Force:      c.Bool("force"),
				Created:    created,
				Overrides: seed.Overrides{
					Pair:           c.String("name"),
					Nodes:          c.StringSlice("node"),
					Interface:      c.String("interface"),
					LinkInterface:  c.String("link-interface"),
					VIP:            c.String("vip"),
					VRRPID:         c.Int("vrrp-id"),
					Gateway:        c.String("gateway"),
					Witness:        c.String("witness"),
					DNS:            c.StringSlice("dns"),
					SearchDomains:  c.StringSlice("search-domain"),
					Domain:         c.String("domain"),
					User:           c.String("user"),
					SSHKeys:        c.StringSlice("ssh-key"),
					InitialPrimary: c.String("initial-primary"),
				},
			})
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "pair %s (created %s, VRRP id %d, initial primary %s)\n", r.Spec.Pair, r.Created.Format(time.RFC3339), r.Spec.VRRPID, r.Spec.InitialPrimary)
			fmt.Fprintln(w, "NODE\tKIND\tPATH")
			for _, a := range arts {
				node := a.Node
				if node == "" {
					node = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", node, a.Kind, a.Path)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(c.App.ErrWriter, "builder seed: the record and the seeds hold the pair's secrets (mode 0600)")
			return nil
		},
	}
}
