// Package statusapi serves the agent's HTTP endpoints on the status port:
// GET /status (JSON), GET /metrics (Prometheus), POST /switchover (loopback
// only), and the client side used by `edgepair-agent status|switchover`.
package statusapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edgepair/edgepair/agent/internal/ha"
	"github.com/edgepair/edgepair/agent/internal/heartbeat"
)

// Source is what the server reports on and acts upon (ha.Node).
type Source interface {
	Status() ha.Status
	RequestSwitchover() error
	ForcePrimary() error
}

// Handler returns the HTTP handler.
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{src: src})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(src.Status())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	local := func(name string, f func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				http.Error(w, name+" is accepted from the node itself only", http.StatusForbidden)
				return
			}
			if err := f(); err != nil {
				http.Error(w, err.Error(), http.StatusConflict)
				return
			}
			fmt.Fprintln(w, name, "requested")
		}
	}
	mux.HandleFunc("POST /switchover", local("switchover", src.RequestSwitchover))
	mux.HandleFunc("POST /force-primary", local("force-primary", src.ForcePrimary))
	return mux
}

var roles = []heartbeat.Role{heartbeat.RoleStarting, heartbeat.RolePrimary, heartbeat.RoleStandby,
	heartbeat.RoleFenced, heartbeat.RoleHandover, heartbeat.RoleRejoining}

var (
	dRole      = prometheus.NewDesc("edgepair_role", "1 for the node's current role.", []string{"role"}, nil)
	dTerm      = prometheus.NewDesc("edgepair_term", "Current term (increases at every promotion).", nil, nil)
	dSync      = prometheus.NewDesc("edgepair_sync_replication", "1 while synchronous replication is on (primary).", nil, nil)
	dStandbyOK = prometheus.NewDesc("edgepair_standby_ok", "1 while the standby streams and is caught up (primary).", nil, nil)
	dVIP       = prometheus.NewDesc("edgepair_vip_held", "1 while this node holds the VIP.", nil, nil)
	dWitness   = prometheus.NewDesc("edgepair_witness_ok", "1 while the witness answers.", nil, nil)
	dPeerAge   = prometheus.NewDesc("edgepair_peer_heartbeat_age_seconds", "Age of the last valid heartbeat from the peer (-1: never).", nil, nil)
	dPGUp      = prometheus.NewDesc("edgepair_postgres_up", "1 while the local PostgreSQL answers.", nil, nil)
	dLSN       = prometheus.NewDesc("edgepair_postgres_lsn_bytes", "Current (primary) or received (standby) WAL position.", nil, nil)
	dLag       = prometheus.NewDesc("edgepair_replication_lag_bytes", "Primary's LSN minus this standby's replay LSN (standby).", nil, nil)
	dFailover  = prometheus.NewDesc("edgepair_last_failover_timestamp_seconds", "When this node last promoted (0: never).", nil, nil)
)

type collector struct{ src Source }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dRole, dTerm, dSync, dStandbyOK, dVIP, dWitness, dPeerAge, dPGUp, dLSN, dLag, dFailover} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Status()
	for _, r := range roles {
		ch <- prometheus.MustNewConstMetric(dRole, prometheus.GaugeValue, b2f(s.Role == r), string(r))
	}
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	g(dTerm, float64(s.Term))
	g(dSync, b2f(s.SyncOn))
	g(dStandbyOK, b2f(s.StandbyOK))
	g(dVIP, b2f(s.VIPHeld))
	g(dWitness, b2f(s.WitnessOK))
	age := -1.0
	if s.PeerAgeMs >= 0 {
		age = float64(s.PeerAgeMs) / 1000
	}
	g(dPeerAge, age)
	g(dPGUp, b2f(s.PG.Up))
	g(dLSN, float64(s.PG.LSN))
	g(dLag, float64(Lag(s)))
	f := 0.0
	if !s.LastFailover.IsZero() {
		f = float64(s.LastFailover.Unix())
	}
	g(dFailover, f)
}

// Lag is the standby's replay distance behind the primary, in bytes (0 on
// the primary or when unknown).
func Lag(s ha.Status) uint64 {
	if s.Role != heartbeat.RoleStandby || s.Peer == nil || s.Peer.LSN < s.PG.ReplayLSN {
		return 0
	}
	return s.Peer.LSN - s.PG.ReplayLSN
}

// Fetch reads /status from an agent.
func Fetch(ctx context.Context, base string) (ha.Status, error) {
	var s ha.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/status", nil)
	if err != nil {
		return s, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return s, fmt.Errorf("agent status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("agent status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("agent status: %w", err)
	}
	return s, nil
}

// Switchover asks the local agent for a planned switchover.
func Switchover(ctx context.Context, base string) error { return post(ctx, base, "switchover") }

// ForcePrimary asks the local agent to become primary without its peer.
func ForcePrimary(ctx context.Context, base string) error { return post(ctx, base, "force-primary") }

func post(ctx context.Context, base, what string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/"+what, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s refused: %s", what, strings.TrimSpace(string(body)))
	}
	return nil
}

// PrintTable writes the pair like `repmgr cluster show`: one row per node,
// the peer's row from its last heartbeat.
func PrintTable(w io.Writer, s ha.Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tTERM\tTIMELINE\tLSN\tLAG\tSYNC\tVIP\tPOSTGRES\tLAST FAILOVER\tSEEN")
	sync := "-"
	if s.Role == heartbeat.RolePrimary {
		sync = "async"
		if s.SyncOn {
			sync = "sync(" + s.SyncStandby + ")"
		}
	}
	fmt.Fprintf(tw, "%s (self)\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Node, s.Role, s.Term, s.PG.Timeline,
		heartbeat.FormatLSN(s.PG.LSN), lagString(s), sync, yesNo(s.VIPHeld), upDown(s.PG.Up), when(s.LastFailover), "now")
	if p := s.Peer; p != nil {
		psync := "-"
		if p.Role == heartbeat.RolePrimary {
			psync = "async"
			if p.SyncOn {
				psync = "sync(" + p.SyncStandby + ")"
			}
		}
		lf := time.Time{}
		if p.LastFailoverUnix > 0 {
			lf = time.Unix(p.LastFailoverUnix, 0)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Node, p.Role, p.Term, p.Timeline,
			heartbeat.FormatLSN(p.LSN), "-", psync, yesNo(p.VIPHeld), upDown(p.Serving), when(lf),
			(time.Duration(s.PeerAgeMs)*time.Millisecond).String()+" ago")
	} else {
		fmt.Fprintln(tw, "(peer)\tnever heard\t\t\t\t\t\t\t\t\t")
	}
	fmt.Fprintf(tw, "\nwitness reachable: %s\n", yesNo(s.WitnessOK))
	if s.VIPCheck != "" && s.VIPCheck != ha.VIPCheckIdle {
		fmt.Fprintf(tw, "VIP ownership check (echoes from the VIP): %s\n", s.VIPCheck)
	}
	return tw.Flush()
}

func lagString(s ha.Status) string {
	if s.Role != heartbeat.RoleStandby {
		return "-"
	}
	return fmt.Sprintf("%d B", Lag(s))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func upDown(b bool) string {
	if b {
		return "serving"
	}
	return "down"
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}
