// Package render produces the configuration files the agent owns:
// keepalived.conf, k3s's config.yaml, PostgreSQL's postgresql.conf, pg_hba.conf
// and pg_ident.conf. Rendering is pure: same input, same bytes.
package render

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"text/template"
)

// Keepalived holds the inputs of keepalived.conf.
type Keepalived struct {
	RouterID  string
	Interface string
	VRID      int
	// AdvertInt in seconds, fractional allowed with VRRPv3 (e.g. "0.2").
	AdvertInt string
	SrcIP     netip.Addr
	PeerIP    netip.Addr
	VIP       netip.Prefix
	// TrackFile is written by the agent: 0 = this node may hold the VIP,
	// anything else puts the instance into FAULT (it never holds the VIP).
	TrackFile string
}

var keepalivedTmpl = template.Must(template.New("k").Parse(`# Managed by edgepair-agent: do not edit, it is rewritten at every start.
# The VIP follows the PostgreSQL primary: the agent writes 0 into the track
# file on the primary and 1 everywhere else (FAULT: never MASTER).
# No vrrp_garp_master_refresh: gratuitous ARP only at the transition to
# MASTER, so a partitioned old primary never re-claims the VIP at the gateway
# from the new one (the agent's VIP ownership check depends on it).
global_defs {
    router_id {{.RouterID}}
    vrrp_version 3
    vrrp_garp_master_repeat 2
    enable_script_security
}

track_file edgepair_primary {
    file "{{.TrackFile}}"
    weight 0
}

vrrp_instance edgepair {
    state BACKUP
    interface {{.Interface}}
    virtual_router_id {{.VRID}}
    priority 100
    advert_int {{.AdvertInt}}
    unicast_src_ip {{.SrcIP}}
    unicast_peer {
        {{.PeerIP}}
    }
    virtual_ipaddress {
        {{.VIP}} dev {{.Interface}}
    }
    track_file {
        edgepair_primary
    }
}
`))

// KeepalivedConf renders keepalived.conf.
func KeepalivedConf(k Keepalived) ([]byte, error) {
	if k.AdvertInt == "" {
		k.AdvertInt = "0.2"
	}
	if _, err := strconv.ParseFloat(k.AdvertInt, 64); err != nil {
		return nil, fmt.Errorf("keepalived advert_int %q: %w", k.AdvertInt, err)
	}
	if k.Interface == "" || k.TrackFile == "" || !k.VIP.IsValid() || !k.SrcIP.IsValid() || !k.PeerIP.IsValid() {
		return nil, fmt.Errorf("keepalived: interface, track file, VIP, source and peer addresses are required")
	}
	var b bytes.Buffer
	if err := keepalivedTmpl.Execute(&b, k); err != nil {
		return nil, fmt.Errorf("keepalived template: %w", err)
	}
	return b.Bytes(), nil
}

// K3s holds the inputs of /etc/rancher/k3s/config.yaml.
type K3s struct {
	DatastoreEndpoint string
	Token             string
	TLSSANs           []string
	NodeIP            string
	NodeName          string
}

// K3sConfig renders k3s's config.yaml (it contains secrets: write it 0600).
func K3sConfig(k K3s) ([]byte, error) {
	if k.DatastoreEndpoint == "" || k.Token == "" || k.NodeIP == "" {
		return nil, fmt.Errorf("k3s config: datastore endpoint, token and node-ip are required")
	}
	var b bytes.Buffer
	b.WriteString("# Managed by edgepair-agent: the datastore is PostgreSQL through the VIP.\n")
	fmt.Fprintf(&b, "datastore-endpoint: %s\n", yamlQuote(k.DatastoreEndpoint))
	fmt.Fprintf(&b, "token: %s\n", yamlQuote(k.Token))
	if k.NodeName != "" {
		fmt.Fprintf(&b, "node-name: %s\n", yamlQuote(k.NodeName))
	}
	fmt.Fprintf(&b, "node-ip: %s\n", yamlQuote(k.NodeIP))
	if len(k.TLSSANs) > 0 {
		b.WriteString("tls-san:\n")
		for _, s := range k.TLSSANs {
			fmt.Fprintf(&b, "  - %s\n", yamlQuote(s))
		}
	}
	return b.Bytes(), nil
}

func yamlQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// Postgres holds the inputs of postgresql.conf. The agent owns the whole file
// and rewrites it before every start, because pg_basebackup and pg_rewind copy
// the peer's configuration files.
type Postgres struct {
	ClusterName string // the node name; also reported by current_setting('cluster_name')
	Port        int
	SocketDir   string
	HBAFile     string
	IdentFile   string
	// PrimaryConninfo and PrimarySlot are used when standby.signal exists.
	PrimaryConninfo string
	PrimarySlot     string
}

var postgresTmpl = template.Must(template.New("p").Parse(`# Managed by edgepair-agent: rewritten before every start.
# synchronous_standby_names is set with ALTER SYSTEM (postgresql.auto.conf)
# by the agent while the standby is streaming and caught up.
listen_addresses = '*'
port = {{.Port}}
unix_socket_directories = '{{.SocketDir}}'
cluster_name = '{{.ClusterName}}'
hba_file = '{{.HBAFile}}'
ident_file = '{{.IdentFile}}'
password_encryption = 'scram-sha-256'
max_connections = 200

wal_level = replica
wal_log_hints = on
hot_standby = on
hot_standby_feedback = on
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '512MB'
wal_sender_timeout = '5s'
wal_receiver_timeout = '5s'
wal_receiver_status_interval = '1s'
wal_retrieve_retry_interval = '1s'
synchronous_commit = on
recovery_target_timeline = 'latest'
{{- if .PrimaryConninfo}}
primary_conninfo = '{{.PrimaryConninfo}}'
{{- end}}
{{- if .PrimarySlot}}
primary_slot_name = '{{.PrimarySlot}}'
{{- end}}

log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
`))

// PostgresConf renders postgresql.conf.
func PostgresConf(p Postgres) ([]byte, error) {
	if p.ClusterName == "" || p.Port == 0 || p.SocketDir == "" || p.HBAFile == "" || p.IdentFile == "" {
		return nil, fmt.Errorf("postgresql.conf: cluster name, port, socket dir, hba and ident files are required")
	}
	for _, s := range []string{p.ClusterName, p.SocketDir, p.HBAFile, p.IdentFile, p.PrimarySlot} {
		if strings.ContainsAny(s, "'\\\n") {
			return nil, fmt.Errorf("postgresql.conf: value %q contains a quote, backslash or newline", s)
		}
	}
	p.PrimaryConninfo = strings.ReplaceAll(p.PrimaryConninfo, `'`, `''`)
	var b bytes.Buffer
	if err := postgresTmpl.Execute(&b, p); err != nil {
		return nil, fmt.Errorf("postgresql.conf template: %w", err)
	}
	return b.Bytes(), nil
}

// HBA holds the inputs of pg_hba.conf.
type HBA struct {
	// PeerAddrs: the only hosts allowed to replicate (and to run pg_rewind
	// against this node). One per path (LAN, direct link).
	PeerAddrs       []netip.Addr
	ReplicationUser string
	// K3sNets may reach the k3s database as K3sUser (the LAN subnet and the VIP).
	K3sNets  []netip.Prefix
	K3sUser  string
	K3sDB    string
	IdentMap string
}

// HBAConf renders pg_hba.conf: local socket for the agent (peer auth mapped
// from root), replication only from the peer, k3s only from the LAN, all
// passwords scram-sha-256. The k3s role may also open the postgres
// database, which kine reads before its own.
func HBAConf(h HBA) ([]byte, error) {
	if len(h.PeerAddrs) == 0 || h.ReplicationUser == "" || h.IdentMap == "" {
		return nil, fmt.Errorf("pg_hba.conf: peer addresses, replication user and ident map are required")
	}
	var b bytes.Buffer
	b.WriteString("# Managed by edgepair-agent: rewritten before every start.\n")
	b.WriteString("# TYPE  DATABASE     USER         ADDRESS              METHOD\n")
	fmt.Fprintf(&b, "local   all          postgres                          peer map=%s\n", h.IdentMap)
	for _, a := range h.PeerAddrs {
		p := netip.PrefixFrom(a, a.BitLen())
		fmt.Fprintf(&b, "host    replication  %-12s %-20s scram-sha-256\n", h.ReplicationUser, p)
		fmt.Fprintf(&b, "host    postgres     %-12s %-20s scram-sha-256\n", h.ReplicationUser, p)
	}
	if h.K3sUser != "" {
		// kine (k3s's datastore layer) connects to the postgres database
		// first to check that its own exists; the role owns nothing there.
		for _, n := range h.K3sNets {
			for _, db := range []string{h.K3sDB, "postgres"} {
				fmt.Fprintf(&b, "host    %-12s %-12s %-20s scram-sha-256\n", db, h.K3sUser, n.Masked())
			}
		}
	}
	return b.Bytes(), nil
}

// IdentConf maps root (the agent) and postgres to the postgres role.
func IdentConf(mapName string) []byte {
	return []byte(fmt.Sprintf("# Managed by edgepair-agent.\n%s root postgres\n%s postgres postgres\n", mapName, mapName))
}
