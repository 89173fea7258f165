// Package server is the edgepair k3s stand-in (kine + kube-apiserver), NOT k3s. It
// honours the part of k3s's server contract edgepair uses: `k3s server` reading
// /etc/rancher/k3s/config.yaml (datastore-endpoint, token, tls-san, node-ip, ...),
// kine as the datastore layer on PostgreSQL, a Kubernetes API server on port 6443,
// state under /var/lib/rancher/k3s, sd_notify READY when the API answers.
package server

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Banner names what runs, in the version output and in every log.
const Banner = "edgepair k3s stand-in (kine + kube-apiserver), not k3s"

// DefaultConfigFile is where k3s reads its configuration.
const DefaultConfigFile = "/etc/rancher/k3s/config.yaml"

// Config is the part of k3s's server configuration the stand-in honours.
type Config struct {
	DataDir           string   // data-dir (default /var/lib/rancher/k3s)
	DatastoreEndpoint string   // datastore-endpoint: postgres://user:pass@host:port/db
	Token             string   // token: also the bearer token of the cluster admin
	TLSSANs           []string // tls-san: extra names/addresses in the serving certificate
	NodeIP            string   // node-ip: advertised address
	NodeName          string   // node-name
	BindAddress       string   // bind-address (default 0.0.0.0)
	HTTPSListenPort   int      // https-listen-port (default 6443)
	AdvertiseAddress  string   // advertise-address (default node-ip)
	ServiceCIDR       string   // service-cidr (default 10.43.0.0/16, as k3s)
	ClusterDomain     string   // cluster-domain (default cluster.local)
	WriteKubeconfig   string   // write-kubeconfig (default /etc/rancher/k3s/k3s.yaml)
	// Ignored lists the keys that k3s knows but the stand-in does not implement.
	Ignored []string
}

func defaults() Config {
	return Config{
		DataDir:         "/var/lib/rancher/k3s",
		BindAddress:     "0.0.0.0",
		HTTPSListenPort: 6443,
		ServiceCIDR:     "10.43.0.0/16",
		ClusterDomain:   "cluster.local",
		WriteKubeconfig: "/etc/rancher/k3s/k3s.yaml",
	}
}

// set applies one configuration key (from the file or a flag). Lists append.
func (c *Config) set(key string, values []string) error {
	one := func() (string, error) {
		if len(values) != 1 {
			return "", fmt.Errorf("%s: want one value, got %d", key, len(values))
		}
		return values[0], nil
	}
	var err error
	switch key {
	case "data-dir", "d":
		c.DataDir, err = one()
	case "datastore-endpoint":
		c.DatastoreEndpoint, err = one()
	case "token", "t":
		c.Token, err = one()
	case "tls-san":
		for _, v := range values {
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					c.TLSSANs = append(c.TLSSANs, s)
				}
			}
		}
	case "node-ip", "i":
		c.NodeIP, err = one()
	case "node-name":
		c.NodeName, err = one()
	case "bind-address":
		c.BindAddress, err = one()
	case "advertise-address":
		c.AdvertiseAddress, err = one()
	case "service-cidr":
		c.ServiceCIDR, err = one()
	case "cluster-domain":
		c.ClusterDomain, err = one()
	case "write-kubeconfig", "o":
		c.WriteKubeconfig, err = one()
	case "https-listen-port":
		var v string
		if v, err = one(); err == nil {
			c.HTTPSListenPort, err = strconv.Atoi(v)
			if err != nil || c.HTTPSListenPort < 1 || c.HTTPSListenPort > 65535 {
				return fmt.Errorf("https-listen-port: %q is not a port number (1-65535)", v)
			}
		}
	default:
		c.Ignored = append(c.Ignored, key)
	}
	return err
}

// ParseFile parses a k3s config.yaml: a mapping of flag names (without dashes) to
// scalars or lists of scalars.
func ParseFile(name string, data []byte) (Config, error) {
	c := defaults()
	if err := c.mergeYAML(name, data); err != nil {
		return Config{}, err
	}
	return c, nil
}

func (c *Config) mergeYAML(name string, data []byte) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("%s: line %d: want a mapping of k3s flag names to values", name, root.Line)
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		var vals []string
		switch v.Kind {
		case yaml.ScalarNode:
			vals = []string{v.Value}
		case yaml.SequenceNode:
			for _, e := range v.Content {
				if e.Kind != yaml.ScalarNode {
					return fmt.Errorf("%s: line %d: %s: list items must be scalars", name, e.Line, k.Value)
				}
				vals = append(vals, e.Value)
			}
		default:
			return fmt.Errorf("%s: line %d: %s: want a scalar or a list of scalars", name, v.Line, k.Value)
		}
		if err := c.set(strings.TrimSuffix(k.Value, "+"), vals); err != nil {
			return fmt.Errorf("%s: line %d: %w", name, k.Line, err)
		}
	}
	return nil
}

// Load reads `k3s server` arguments: --config/-c FILE (default DefaultConfigFile,
// which may be missing) and any --key=value or --key value flags, which override the
// file (lists append), as k3s does.
func Load(args []string) (Config, error) {
	type kv struct {
		k string
		v string
	}
	var flags []kv
	cfgFile, explicit := DefaultConfigFile, false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return Config{}, fmt.Errorf("unexpected argument %q: k3s server takes only flags", a)
		}
		name := strings.TrimLeft(a, "-")
		val, hasVal := "", false
		if k, v, ok := strings.Cut(name, "="); ok {
			name, val, hasVal = k, v, true
		}
		if !hasVal {
			if isBool(name) {
				val = "true"
			} else if i+1 < len(args) {
				i++
				val = args[i]
			} else {
				return Config{}, fmt.Errorf("flag --%s needs a value", name)
			}
		}
		if name == "config" || name == "c" {
			cfgFile, explicit = val, true
			continue
		}
		flags = append(flags, kv{name, val})
	}
	c := defaults()
	data, err := os.ReadFile(cfgFile)
	switch {
	case err == nil:
		if err := c.mergeYAML(cfgFile, data); err != nil {
			return Config{}, err
		}
	case errors.Is(err, os.ErrNotExist) && !explicit:
	default:
		return Config{}, fmt.Errorf("config: %w", err)
	}
	for _, f := range flags {
		if err := c.set(f.k, []string{f.v}); err != nil {
			return Config{}, fmt.Errorf("flag --%s: %w", f.k, err)
		}
	}
	return c, c.Validate()
}

func isBool(name string) bool {
	switch name {
	case "debug", "disable-agent", "cluster-init", "disable-network-policy", "disable-cloud-controller",
		"disable-kube-proxy", "disable-scheduler", "disable-controller-manager", "disable-helm-controller",
		"secrets-encryption", "selinux", "protect-kernel-defaults", "flannel-ipv6-masq", "embedded-registry":
		return true
	}
	return false
}

// Validate checks what the stand-in needs, naming the key and what is expected.
func (c *Config) Validate() error {
	var errs []error
	if c.DatastoreEndpoint == "" {
		errs = append(errs, errors.New("datastore-endpoint: missing; the stand-in runs kine on PostgreSQL and needs postgres://user:password@host:port/database"))
	} else if u, err := url.Parse(c.DatastoreEndpoint); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" {
		errs = append(errs, fmt.Errorf("datastore-endpoint: want postgres://user:password@host:port/database (the stand-in supports only PostgreSQL), got scheme %q", schemeOf(c.DatastoreEndpoint)))
	}
	if c.Token == "" {
		errs = append(errs, errors.New("token: missing; the cluster token is required"))
	} else if strings.ContainsAny(c.Token, ",\"\n\r") {
		errs = append(errs, errors.New("token: must not contain commas, quotes or newlines (it becomes a bearer token)"))
	}
	if c.NodeIP != "" {
		if _, err := netip.ParseAddr(c.NodeIP); err != nil {
			errs = append(errs, fmt.Errorf("node-ip: %q is not an IP address", c.NodeIP))
		}
	}
	if c.AdvertiseAddress == "" {
		c.AdvertiseAddress = c.NodeIP
	}
	if _, err := netip.ParsePrefix(c.ServiceCIDR); err != nil {
		errs = append(errs, fmt.Errorf("service-cidr: %q is not a CIDR", c.ServiceCIDR))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir: empty"))
	}
	sort.Strings(c.Ignored)
	return errors.Join(errs...)
}

func schemeOf(s string) string {
	if k, _, ok := strings.Cut(s, "://"); ok {
		return k
	}
	return ""
}
