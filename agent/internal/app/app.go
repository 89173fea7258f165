// Package app wires the agent together: configuration, services, the state
// machine, heartbeats, the witness, the VIP, the HTTP endpoints and k3s.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/jackc/pgx/v5"

	"github.com/edgepair/edgepair/agent/internal/ha"
	"github.com/edgepair/edgepair/agent/internal/heartbeat"
	"github.com/edgepair/edgepair/agent/internal/netvip"
	"github.com/edgepair/edgepair/agent/internal/pair"
	"github.com/edgepair/edgepair/agent/internal/pg"
	"github.com/edgepair/edgepair/agent/internal/render"
	"github.com/edgepair/edgepair/agent/internal/services"
	"github.com/edgepair/edgepair/agent/internal/statusapi"
	"github.com/edgepair/edgepair/agent/internal/store"
	"github.com/edgepair/edgepair/agent/internal/witness"
)

// Service modes.
const (
	ModeSystemd = "systemd"
	ModeExec    = "exec"
)

// Options are the agent's paths and modes (flags / environment).
type Options struct {
	ConfigPath     string
	StateDir       string
	RunDir         string
	Services       string // ModeSystemd or ModeExec
	PGBin          string
	PGData         string
	PGSocketDir    string
	PGLog          string // exec mode: pg_ctl log file
	OSUser         string
	KeepalivedBin  string
	KeepalivedConf string
	K3s            bool
	K3sConfig      string
	StatusListen   string // default :<ports.status>
}

// Run is the daemon. It returns when ctx ends or on a fatal setup error.
// PostgreSQL, keepalived and k3s keep running when the agent exits: a
// restarted agent adopts them.
func Run(ctx context.Context, o Options, log *slog.Logger) error {
	p, err := pair.Load(o.ConfigPath)
	if err != nil {
		return err
	}
	if o.Services != ModeSystemd && o.Services != ModeExec {
		return fmt.Errorf("--services: %q, want %q or %q", o.Services, ModeSystemd, ModeExec)
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{o.StateDir, 0o700}, {o.RunDir, 0o755}, {filepath.Dir(o.KeepalivedConf), 0o755}} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return fmt.Errorf("create %s: %w", d.path, err)
		}
	}
	log = log.With("node", p.Self.Name)
	log.Info("edgepair agent starting", "pair", p.Cfg.Pair, "peer", p.Peer.Name, "services", o.Services,
		"heartbeat", p.Timeouts.Heartbeat.String(), "peer_dead", p.Timeouts.PeerDead.String(),
		"fence_after", p.Timeouts.FenceAfter.String(), "promote_after", p.Timeouts.PromoteAfter.String(),
		"degrade_after", p.Timeouts.DegradeAfter.String())

	// The VIP is not ours until the state machine says so: write the track
	// file before keepalived reads it.
	vip := &netvip.VIP{Iface: p.Self.Interface, Addr: p.Cfg.VIP.Address, TrackFile: filepath.Join(o.RunDir, "vip-track")}
	if err := vip.SetEligible(false); err != nil {
		return err
	}
	kconf, err := render.KeepalivedConf(render.Keepalived{
		RouterID: "edgepair-" + p.Self.Name, Interface: p.Self.Interface, VRID: p.Cfg.VIP.VRRPID,
		SrcIP: p.Self.Address.Addr(), PeerIP: p.Peer.Address.Addr(), VIP: p.Cfg.VIP.Address, TrackFile: vip.TrackFile,
	})
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.KeepalivedConf, kconf, 0o644); err != nil {
		return fmt.Errorf("write keepalived config: %w", err)
	}

	var pgSvc pg.Service
	var kaSvc, k3sSvc services.Unit
	startPermit := ""
	switch o.Services {
	case ModeSystemd:
		sd, err := services.NewSystemd(ctx)
		if err != nil {
			return err
		}
		defer sd.Close()
		pgSvc, kaSvc, k3sSvc = sd.Unit("edgepair-postgres.service"), sd.Unit("keepalived.service"), sd.Unit("k3s.service")
		// edgepair-postgres.service asserts this file (see pg.Config).
		startPermit = filepath.Join(o.RunDir, "postgres.start-permit")
	case ModeExec:
		pgSvc = &services.PgCtl{Bin: o.PGBin, PGData: o.PGData, LogFile: o.PGLog, OSUser: o.OSUser}
		kaSvc = &services.Daemon{Name: "keepalived", Bin: o.KeepalivedBin,
			Args: []string{"-n", "-l", "-D", "-P", "-f", o.KeepalivedConf,
				"-p", filepath.Join(o.RunDir, "keepalived.pid"), "-r", filepath.Join(o.RunDir, "keepalived-vrrp.pid"),
				"-c", filepath.Join(o.RunDir, "keepalived-checkers.pid")},
			PIDFile: filepath.Join(o.RunDir, "keepalived.agent.pid"), LogFile: filepath.Join(o.RunDir, "keepalived.log")}
		if o.K3s {
			log.Warn("--k3s is not supported with --services exec; k3s stays off")
			o.K3s = false
		}
	}
	if err := kaSvc.Start(ctx); err != nil {
		log.Error("starting keepalived failed; the VIP cannot move until it runs", "err", err)
	}
	go keepRunning(ctx, kaSvc, 5*time.Second, log.With("component", "keepalived"))

	k3sPass := pair.K3sDatastorePassword(p.Key)
	k3sNets := []netip.Prefix{p.Self.Address.Masked(), netip.PrefixFrom(p.Cfg.VIP.Address.Addr(), 32)}
	db := pg.New(pg.Config{
		Bin: o.PGBin, PGData: o.PGData, SocketDir: o.PGSocketDir, Port: p.PGPort, OSUser: o.OSUser,
		Self: p.Self.Name, Peer: p.Peer.Name, PeerHost: p.ReplicationHost(), PeerAddrs: p.PeerAddrs(),
		K3sNets: k3sNets, ReplPass: p.Cfg.Secrets.ReplicationPassword, K3sPass: k3sPass,
		StartPermit: startPermit,
	}, pgSvc, log.With("component", "postgres"))
	db.ClearStartPermit() // left by an agent that died while starting it

	// ARP from this node names the node address, never the VIP (the VIP
	// ownership check depends on the gateway's entry for the VIP moving only
	// on the new primary's gratuitous ARP).
	if err := netvip.ARPAnnounceNodeAddr("/proc/sys", p.Self.Interface); err != nil {
		log.Warn("could not set arp_announce=2: an old primary's ARP may re-claim the VIP at the gateway", "interface", p.Self.Interface, "err", err)
	}
	// The witness is pinged twice: from the node address (isolation) and from
	// the VIP (ownership: the gateway answers the VIP only where its
	// neighbour entry for the VIP points).
	wit := &witness.Pinger{Addr: p.WitnessAddr(), Source: p.Self.Address.Addr(), Interval: 250 * time.Millisecond, Window: p.Timeouts.PeerDead, Log: log}
	vipEcho := &witness.Pinger{Addr: p.WitnessAddr(), Source: p.Cfg.VIP.Address.Addr(), Interval: 250 * time.Millisecond, Window: p.Timeouts.PeerDead, Log: log}
	for _, pr := range []struct {
		p    *witness.Pinger
		what string
	}{{wit, "witness prober stopped: the witness counts as unreachable"}, {vipEcho, "VIP echo prober stopped: the VIP ownership check is unavailable"}} {
		go func() {
			if err := pr.p.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				log.Error(pr.what, "err", err)
			}
		}()
	}

	var k3s ha.K3s
	if o.K3s {
		k3s = k3sSvc
	}
	node, err := ha.New(ha.Config{Self: p.Self.Name, Peer: p.Peer.Name, InitialPrimary: p.Cfg.InitialPrimary, Timeouts: p.Timeouts},
		ha.Deps{Clock: realClock{}, DB: db, VIP: vip, Witness: wit, VIPEcho: vipEcho,
			Probe: &witness.TCPProbe{Addr: netip.AddrPortFrom(p.Cfg.VIP.Address.Addr(), uint16(p.PGPort)), Timeout: 300 * time.Millisecond},
			K3s:   k3s, Store: store.File{Path: filepath.Join(o.StateDir, "state.json")}, Log: log.With("component", "ha")})
	if err != nil {
		return err
	}

	udp := &heartbeat.UDP{Key: p.Key, Self: p.Self.Name, Peer: p.Peer.Name, Pair: p.Fingerprint, Log: log.With("component", "heartbeat")}
	for _, a := range p.PeerAddrs() {
		udp.Peers = append(udp.Peers, netip.AddrPortFrom(a, uint16(p.HBPort)))
	}
	if err := udp.Listen(p.HBPort); err != nil {
		return err
	}
	go func() {
		if err := udp.Receive(ctx, node.OnHeartbeat2); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("heartbeat receiver stopped", "err", err)
		}
	}()
	go sendLoop(ctx, node, udp, p, log)

	listen := o.StatusListen
	if listen == "" {
		listen = ":" + strconv.Itoa(p.HTTPPort)
	}
	srv := &http.Server{Addr: listen, Handler: statusapi.Handler(node), ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("status listener: %w", err)
	}
	go func() { _ = srv.Serve(ln) }()
	go func() { <-ctx.Done(); _ = srv.Close() }()

	if o.K3s {
		go k3sLoop(ctx, o, p, k3sPass, k3sSvc, log.With("component", "k3s"))
	}
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("sd_notify READY failed", "err", err)
	}
	return node.Run(ctx)
}

// keepRunning starts svc again if it died (Start is a no-op while it runs).
func keepRunning(ctx context.Context, svc services.Unit, every time.Duration, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		if err := svc.Start(ctx); err != nil {
			log.Warn("keepalived is not running and could not be started", "err", err)
		}
	}
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// sendLoop sends a heartbeat every interval (and at once on a role change)
// and feeds systemd's watchdog: the loop needs the state machine's lock, so a
// stuck machine stops the watchdog pings.
func sendLoop(ctx context.Context, node *ha.Node, udp *heartbeat.UDP, p *pair.Pair, log *slog.Logger) {
	t := time.NewTicker(p.Timeouts.Heartbeat)
	defer t.Stop()
	wd, _ := daemon.SdWatchdogEnabled(false)
	lastWD := time.Time{}
	var errOnce sync.Once
	for {
		m := node.Message()
		m.Pair = p.Fingerprint
		if err := udp.Send(m); err != nil {
			errOnce.Do(func() { log.Warn("heartbeat send failed on every path", "err", err) })
		}
		if wd > 0 && time.Since(lastWD) > wd/4 {
			_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
			lastWD = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-node.SendKick():
		}
	}
}

// k3sLoop writes k3s's configuration and starts k3s once PostgreSQL answers
// through the VIP with the k3s credentials.
func k3sLoop(ctx context.Context, o Options, p *pair.Pair, pass string, svc services.Unit, log *slog.Logger) {
	endpoint := fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", pg.K3sUser, pass,
		net.JoinHostPort(p.Cfg.VIP.Address.Addr().String(), strconv.Itoa(p.PGPort)), pg.K3sDB)
	conf, err := render.K3sConfig(render.K3s{
		DatastoreEndpoint: endpoint, Token: p.Cfg.Secrets.K3sToken, NodeName: p.Self.Name,
		NodeIP: p.Self.Address.Addr().String(), TLSSANs: []string{p.Cfg.VIP.Address.Addr().String()},
	})
	if err != nil {
		log.Error("k3s config", "err", err)
		return
	}
	if err := os.MkdirAll(filepath.Dir(o.K3sConfig), 0o755); err != nil {
		log.Error("k3s config dir", "err", err)
		return
	}
	if err := os.WriteFile(o.K3sConfig, conf, 0o600); err != nil {
		log.Error("write k3s config", "err", err)
		return
	}
	for {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		conn, err := pgx.Connect(c, endpoint+"&connect_timeout=2")
		if err == nil {
			err = conn.Ping(c)
			conn.Close(c)
		}
		cancel()
		if err == nil {
			log.Info("datastore answers through the VIP: starting k3s")
			if err := svc.Start(ctx); err != nil {
				log.Error("start k3s failed", "err", err)
			} else {
				return
			}
		} else {
			log.Debug("datastore not reachable through the VIP yet", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
