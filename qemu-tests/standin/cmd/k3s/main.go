// Command k3s is the edgepair k3s stand-in (kine + kube-apiserver), NOT k3s. It
// carries kine and kube-apiserver inside itself (built by ../../build.sh) and
// implements `k3s server` with k3s's configuration file, so the image's k3s.service
// (ExecStart=/usr/local/bin/k3s server) runs it unchanged where real k3s cannot be
// had. Every log line and the version output say what it is.
package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/edgepair/edgepair/qemu-tests/standin/internal/server"
)

//go:embed payload
var payloadFS embed.FS

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("standin", server.Banner)
	payload, _ := fs.Sub(payloadFS, "payload")
	if len(args) == 0 {
		fmt.Fprintf(os.Stderr, "usage: k3s server [--config FILE] [--key=value ...] | k3s --version\n%s\n", server.Banner)
		return 2
	}
	switch args[0] {
	case "--version", "-v", "version":
		v, _ := fs.ReadFile(payload, "VERSIONS")
		fmt.Printf("k3s version v0.0.0+edgepair-standin\n%s\n%s", server.Banner, v)
		return 0
	case "server":
		cfg, err := server.Load(args[1:])
		if err != nil {
			log.Error("bad configuration", "err", err)
			return 1
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := server.Run(ctx, cfg, payload, log); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("stopped", "err", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(os.Stderr, "k3s %s: not implemented by the %s; only `server` and `--version` are\n", strings.Join(args, " "), server.Banner)
		return 2
	}
}
