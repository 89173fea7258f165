package seed

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"net/netip"

	"github.com/edgepair/edgepair/agent/pairconfig"
	"gopkg.in/yaml.v3"
)

// NodeSeed is the rendered cloud-init data of one node.
type NodeSeed struct {
	Node          string
	Config        *pairconfig.Config // the node's pair configuration (self set)
	MetaData      []byte             // NoCloud meta-data
	UserData      []byte             // #cloud-config user-data (holds the secrets)
	NetworkConfig []byte             // network config version 2
	// GuestInfo are the vSphere guestinfo keys and values (VMware
	// datasource), in a fixed order.
	GuestInfo []KV
}

// KV is one guestinfo key and value.
type KV struct{ Key, Value string }

// Render builds both nodes' seeds from the record. It is deterministic.
func Render(r *Record) ([2]NodeSeed, error) {
	var out [2]NodeSeed
	for i, n := range r.Spec.Nodes {
		c, err := r.Spec.PairConfig(n.Name, r.Secrets)
		if err != nil {
			return out, err
		}
		ns := NodeSeed{Node: n.Name, Config: c}
		if ns.MetaData, err = metaData(r, i, c, nil); err != nil {
			return out, err
		}
		if ns.UserData, err = userData(r, i, c); err != nil {
			return out, err
		}
		net := networkConfig(r, i)
		if ns.NetworkConfig, err = marshalYAML(net, ""); err != nil {
			return out, err
		}
		// The VMware datasource takes the network configuration from the
		// metadata's "network" key.
		gmeta, err := metaData(r, i, c, net)
		if err != nil {
			return out, err
		}
		ns.GuestInfo = []KV{
			{"guestinfo.metadata", gzipBase64(gmeta)},
			{"guestinfo.metadata.encoding", "gzip+base64"},
			{"guestinfo.userdata", gzipBase64(ns.UserData)},
			{"guestinfo.userdata.encoding", "gzip+base64"},
		}
		out[i] = ns
	}
	return out, nil
}

// InstanceID is the node's cloud-init instance id: stable for one pair
// record, new for a new pair (it includes the configuration's
// fingerprint), so cloud-init runs its per-instance modules (users, SSH
// host keys) once per seed and not again on reboots.
func InstanceID(pair, node string, c *pairconfig.Config) string {
	return fmt.Sprintf("iid-edgepair-%s-%s-%s", pair, node, c.ShortFingerprint())
}

// mapping keeps key order in YAML output.
type mapping []kv
type kv struct {
	k string
	v any
}

func (m mapping) MarshalYAML() (any, error) {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for _, e := range m {
		var val yaml.Node
		if err := val.Encode(e.v); err != nil {
			return nil, err
		}
		n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: e.k}, &val)
	}
	return n, nil
}

func marshalYAML(v any, header string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(header)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("rendering seed: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("rendering seed: %w", err)
	}
	return b.Bytes(), nil
}

func fqdn(r *Record, i int) string {
	h := r.Spec.Nodes[i].hostname()
	if r.Spec.Domain != "" {
		return h + "." + r.Spec.Domain
	}
	return h
}

func metaData(r *Record, i int, c *pairconfig.Config, network any) ([]byte, error) {
	n := r.Spec.Nodes[i]
	m := mapping{
		{"instance-id", InstanceID(r.Spec.Pair, n.Name, c)},
		{"local-hostname", fqdn(r, i)},
	}
	if network != nil {
		m = append(m, kv{"network", network})
	}
	return marshalYAML(m, "")
}

func userData(r *Record, i int, c *pairconfig.Config) ([]byte, error) {
	pc, err := c.Marshal()
	if err != nil {
		return nil, err
	}
	s := r.Spec
	n := s.Nodes[i]
	m := mapping{
		{"hostname", n.hostname()},
	}
	if s.Domain != "" {
		m = append(m, kv{"fqdn", fqdn(r, i)})
	}
	m = append(m,
		kv{"manage_etc_hosts", true},
		kv{"users", []mapping{{
			{"name", s.User},
			{"gecos", "edgepair operator"},
			{"groups", []string{"sudo"}},
			{"shell", "/bin/bash"},
			{"sudo", "ALL=(ALL) NOPASSWD:ALL"},
			{"lock_passwd", true},
			{"ssh_authorized_keys", s.SSHAuthorizedKeys},
		}}},
		kv{"disable_root", true},
		kv{"ssh_pwauth", false},
		kv{"write_files", []mapping{{
			{"path", pairconfig.DefaultPath},
			{"owner", "root:root"},
			{"permissions", "0600"},
			{"content", string(pc)},
		}}},
	)
	return marshalYAML(m, "#cloud-config\n# edgepair seed for node "+n.Name+" of pair "+s.Pair+" (builder seed)\n")
}

func ethernet(iface, mac string, addr string, extra mapping) (string, mapping) {
	e := mapping{}
	if mac != "" {
		e = append(e, kv{"match", mapping{{"macaddress", mac}}}, kv{"set-name", iface})
	}
	e = append(e, kv{"dhcp4", false}, kv{"dhcp6", false}, kv{"addresses", []string{addr}})
	return iface, append(e, extra...)
}

func networkConfig(r *Record, i int) mapping {
	s := r.Spec
	n := s.Nodes[i]
	gw := netip.MustParseAddr(s.Gateway)
	dflt := "0.0.0.0/0"
	if gw.Is6() {
		dflt = "::/0"
	}
	extra := mapping{{"routes", []mapping{{{"to", dflt}, {"via", s.Gateway}}}}}
	if len(s.DNS) > 0 || len(s.SearchDomains) > 0 {
		ns := mapping{}
		if len(s.DNS) > 0 {
			ns = append(ns, kv{"addresses", s.DNS})
		}
		if len(s.SearchDomains) > 0 {
			ns = append(ns, kv{"search", s.SearchDomains})
		}
		extra = append(extra, kv{"nameservers", ns})
	}
	eths := mapping{}
	name, e := ethernet(n.Interface, n.MAC, n.Address, extra)
	eths = append(eths, kv{name, e})
	if n.Link != "" {
		name, e := ethernet(n.LinkInterface, n.LinkMAC, n.Link, nil)
		eths = append(eths, kv{name, e})
	}
	return mapping{{"version", 2}, {"ethernets", eths}}
}

// gzipBase64 is the "gzip+base64" guestinfo encoding, deterministic (no
// name, zero modification time).
func gzipBase64(b []byte) string {
	var z bytes.Buffer
	w, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	_, _ = w.Write(b) // writes to a bytes.Buffer cannot fail
	_ = w.Close()
	return base64.StdEncoding.EncodeToString(z.Bytes())
}
