// Command edgepair-agent runs on both nodes of an edgepair: it makes them a
// PostgreSQL primary and synchronous standby with the VIP on the primary,
// fails over, fences and rejoins. See agent/internal/ha.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/edgepair/edgepair/agent/internal/app"
	"github.com/edgepair/edgepair/agent/internal/pair"
	"github.com/edgepair/edgepair/agent/internal/statusapi"
	"github.com/edgepair/edgepair/agent/pairconfig"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newApp().RunContext(ctx, os.Args)
	stop()
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "edgepair-agent:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	var o app.Options
	var logFormat, logLevel string
	var statusURL string
	configFlag := &cli.StringFlag{Name: "config", Usage: "pair configuration file", Value: pairconfig.DefaultPath,
		EnvVars: []string{"EDGEPAIR_CONFIG"}, Destination: &o.ConfigPath}
	statusFlag := &cli.StringFlag{Name: "agent-url", Usage: "the local agent's status endpoint (default: http://127.0.0.1:<ports.status> from --config)",
		EnvVars: []string{"EDGEPAIR_AGENT_URL"}, Destination: &statusURL}
	agentURL := func() (string, error) {
		if statusURL != "" {
			return statusURL, nil
		}
		p, err := pair.Load(o.ConfigPath)
		if err != nil {
			return "", fmt.Errorf("%w (or pass --agent-url)", err)
		}
		return "http://127.0.0.1:" + strconv.Itoa(p.HTTPPort), nil
	}
	return &cli.App{
		Name:  "edgepair-agent",
		Usage: "first boot and failover agent of an edgepair node",
		Commands: []*cli.Command{
			{
				Name:  "run",
				Usage: "run the agent (the daemon)",
				Flags: []cli.Flag{
					configFlag,
					&cli.StringFlag{Name: "state-dir", Value: "/var/lib/edgepair", Usage: "persistent agent state (term)", EnvVars: []string{"EDGEPAIR_STATE_DIR"}, Destination: &o.StateDir},
					&cli.StringFlag{Name: "run-dir", Value: "/run/edgepair", Usage: "runtime files (keepalived track file, pid files)", EnvVars: []string{"EDGEPAIR_RUN_DIR"}, Destination: &o.RunDir},
					&cli.StringFlag{Name: "services", Value: app.ModeSystemd, Usage: "how to run PostgreSQL and keepalived: systemd (units over D-Bus) or exec (child processes, for tests)", EnvVars: []string{"EDGEPAIR_SERVICES"}, Destination: &o.Services},
					&cli.StringFlag{Name: "pg-bin", Value: "/usr/lib/postgresql/15/bin", Usage: "PostgreSQL binaries", EnvVars: []string{"EDGEPAIR_PG_BIN"}, Destination: &o.PGBin},
					&cli.StringFlag{Name: "pgdata", Value: "/var/lib/postgresql/15/edgepair", Usage: "PostgreSQL data directory", EnvVars: []string{"EDGEPAIR_PGDATA"}, Destination: &o.PGData},
					&cli.StringFlag{Name: "pg-socket-dir", Value: "/var/run/postgresql", Usage: "PostgreSQL unix socket directory", EnvVars: []string{"EDGEPAIR_PG_SOCKET_DIR"}, Destination: &o.PGSocketDir},
					&cli.StringFlag{Name: "pg-log", Value: "/var/log/postgresql/edgepair.log", Usage: "PostgreSQL log file (exec mode)", EnvVars: []string{"EDGEPAIR_PG_LOG"}, Destination: &o.PGLog},
					&cli.StringFlag{Name: "pg-user", Value: "postgres", Usage: "OS user that owns the data directory", EnvVars: []string{"EDGEPAIR_PG_USER"}, Destination: &o.OSUser},
					&cli.StringFlag{Name: "keepalived-bin", Value: "/usr/sbin/keepalived", Usage: "keepalived binary (exec mode)", EnvVars: []string{"EDGEPAIR_KEEPALIVED_BIN"}, Destination: &o.KeepalivedBin},
					&cli.StringFlag{Name: "keepalived-conf", Value: "/etc/keepalived/keepalived.conf", Usage: "keepalived configuration to write", EnvVars: []string{"EDGEPAIR_KEEPALIVED_CONF"}, Destination: &o.KeepalivedConf},
					&cli.BoolFlag{Name: "k3s", Value: true, Usage: "write k3s's config and start k3s once the datastore answers through the VIP (systemd mode)", EnvVars: []string{"EDGEPAIR_K3S"}, Destination: &o.K3s},
					&cli.StringFlag{Name: "k3s-config", Value: "/etc/rancher/k3s/config.yaml", Usage: "k3s configuration to write", EnvVars: []string{"EDGEPAIR_K3S_CONFIG"}, Destination: &o.K3sConfig},
					&cli.StringFlag{Name: "status-listen", Usage: "address of /status and /metrics (default :<ports.status>)", EnvVars: []string{"EDGEPAIR_STATUS_LISTEN"}, Destination: &o.StatusListen},
					&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json", EnvVars: []string{"EDGEPAIR_LOG_FORMAT"}, Destination: &logFormat},
					&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"EDGEPAIR_LOG_LEVEL"}, Destination: &logLevel},
				},
				Action: func(c *cli.Context) error {
					if c.Args().Len() > 0 {
						return fmt.Errorf("run takes no arguments, got %q", c.Args().Slice())
					}
					log, err := newLogger(logFormat, logLevel)
					if err != nil {
						return err
					}
					return app.Run(c.Context, o, log)
				},
			},
			{
				Name:  "status",
				Usage: "print the pair as a table (from the local agent's /status)",
				Flags: []cli.Flag{configFlag, statusFlag, &cli.BoolFlag{Name: "json", Usage: "print the raw /status JSON"}},
				Action: func(c *cli.Context) error {
					u, err := agentURL()
					if err != nil {
						return err
					}
					ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
					defer cancel()
					s, err := statusapi.Fetch(ctx, u)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(s)
					}
					return statusapi.PrintTable(os.Stdout, s)
				},
			},
			{
				Name:  "switchover",
				Usage: "swap primary and standby with no loss (the primary stops cleanly, the standby promotes once it has all WAL)",
				Flags: []cli.Flag{configFlag, statusFlag, &cli.DurationFlag{Name: "wait", Value: 60 * time.Second, Usage: "how long to wait for the swap"}},
				Action: func(c *cli.Context) error {
					u, err := agentURL()
					if err != nil {
						return err
					}
					ctx, cancel := context.WithTimeout(c.Context, c.Duration("wait"))
					defer cancel()
					before, err := statusapi.Fetch(ctx, u)
					if err != nil {
						return err
					}
					if err := statusapi.Switchover(ctx, u); err != nil {
						return err
					}
					for {
						s, err := statusapi.Fetch(ctx, u)
						if err == nil && s.Term > before.Term && s.Peer != nil && s.Peer.Term == s.Term &&
							(s.Role == "primary" || s.Role == "standby") && s.Role != before.Role &&
							(s.Peer.Role == "primary" || s.Peer.Role == "standby") && s.Peer.Role != s.Role {
							fmt.Printf("switchover done: %s is %s, term %d\n", s.Node, s.Role, s.Term)
							return statusapi.PrintTable(os.Stdout, s)
						}
						select {
						case <-ctx.Done():
							return fmt.Errorf("switchover did not complete within %s (see the agent logs)", c.Duration("wait"))
						case <-time.After(250 * time.Millisecond):
						}
					}
				},
			},
			{
				Name:  "force-primary",
				Usage: "operator override: make this node primary although its peer is gone (refused while the peer is heard; if the peer is in fact serving, this makes two primaries)",
				Flags: []cli.Flag{configFlag, statusFlag, &cli.BoolFlag{Name: "yes-i-know", Usage: "confirm that the peer is down for good"}},
				Action: func(c *cli.Context) error {
					if !c.Bool("yes-i-know") {
						return errors.New("force-primary needs --yes-i-know: make sure the peer is powered off or cut off first")
					}
					u, err := agentURL()
					if err != nil {
						return err
					}
					ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
					defer cancel()
					if err := statusapi.ForcePrimary(ctx, u); err != nil {
						return err
					}
					fmt.Println("force-primary requested; see `edgepair-agent status`")
					return nil
				},
			},
		},
	}
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q, want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q, want text or json", format)
}
