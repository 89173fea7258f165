// Command builder turns an edgepair profile into a bootable, immutable disk
// image (raw, qcow2, ova) and inspects images it made.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "builder: interrupted")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "builder:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "builder",
		Usage: "build edgepair appliance disk images from a profile",
		Description: `builder makes a UEFI disk image with a read-only root (squashfs in slot A,
slot B reserved for updates) and all state on a data partition that the image
creates on first boot over the rest of the disk.

  sudo builder build --profile profiles/debian-12.yaml --output dist
  builder inspect dist/edgepair-debian-12.raw
  builder plan --profile profiles/ubuntu-24.04.yaml`,
		Commands: commands(),
	}
}
