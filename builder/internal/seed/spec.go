// Package seed turns a short pair file into the per-node cloud-init seeds
// that make two identical edgepair machines a pair: NoCloud ISO9660 and FAT
// images labelled cidata, vSphere guestinfo values, and a pair record with
// the generated secrets from which the same seeds are rebuilt byte for byte.
package seed

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/edgepair/edgepair/agent/pairconfig"
	"github.com/edgepair/edgepair/agent/pairconfig/strictyaml"
)

// DefaultUser is the operator account the seed creates.
const DefaultUser = "edgepair"

// Spec is the pair file an operator writes (or gives as flags). Only names,
// addresses, the VIP, the gateway and at least one SSH key are required.
type Spec struct {
	// Pair is the pair's name (a DNS label).
	Pair string `yaml:"pair"`
	// Nodes are the two machines; the first is the initial primary unless
	// InitialPrimary says otherwise.
	Nodes [2]SpecNode `yaml:"nodes"`
	// Interface is the LAN NIC name on both nodes (a node may override it).
	Interface string `yaml:"interface"`
	// LinkInterface is the direct-link NIC name on both nodes when the
	// nodes have Link addresses (a node may override it).
	LinkInterface string `yaml:"linkInterface,omitempty"`
	// VIP is the virtual IP; without a prefix length it takes the nodes'.
	VIP string `yaml:"vip"`
	// VRRPID is the VRRP router id; 0 derives one from the pair name.
	VRRPID int `yaml:"vrrpID,omitempty"`
	// Gateway is the LAN's default gateway (also the default witness).
	Gateway string `yaml:"gateway"`
	// Witness is a third device both nodes ping; defaults to Gateway.
	Witness string `yaml:"witness,omitempty"`
	// DNS lists name servers; defaults to none (static addresses only).
	DNS []string `yaml:"dns,omitempty"`
	// SearchDomains lists DNS search domains.
	SearchDomains []string `yaml:"searchDomains,omitempty"`
	// Domain, if set, makes each node's FQDN <name>.<domain>.
	Domain string `yaml:"domain,omitempty"`
	// User is the operator account (default "edgepair"), sudo without
	// password, SSH keys only.
	User string `yaml:"user,omitempty"`
	// SSHAuthorizedKeys are OpenSSH public keys for User.
	SSHAuthorizedKeys []string `yaml:"sshAuthorizedKeys"`
	// InitialPrimary names the node that runs initdb on first boot.
	InitialPrimary string `yaml:"initialPrimary,omitempty"`
}

// SpecNode is one machine of the pair file.
type SpecNode struct {
	Name string `yaml:"name"`
	// Address is the LAN address with prefix length, e.g. 198.18.0.11/24.
	Address string `yaml:"address"`
	// Hostname overrides Name as the machine's hostname.
	Hostname string `yaml:"hostname,omitempty"`
	// MAC, if set, matches the LAN NIC by MAC address and renames it to
	// the interface name; otherwise the NIC is matched by name.
	MAC string `yaml:"mac,omitempty"`
	// Interface overrides Spec.Interface for this node.
	Interface string `yaml:"interface,omitempty"`
	// Link is the optional direct replication link address with prefix.
	Link string `yaml:"link,omitempty"`
	// LinkMAC matches the direct-link NIC by MAC address.
	LinkMAC string `yaml:"linkMAC,omitempty"`
	// LinkInterface overrides Spec.LinkInterface for this node.
	LinkInterface string `yaml:"linkInterface,omitempty"`
}

// ParseSpec decodes a pair file strictly and returns the checked,
// normalised spec (defaults filled in). Errors name the file, line and
// field.
func ParseSpec(data []byte, name string) (*Spec, error) {
	s, pos, err := decodeSpec(data, name)
	if err != nil {
		return nil, err
	}
	if err := s.check(pos, name); err != nil {
		return nil, err
	}
	return s, nil
}

func decodeSpec(data []byte, name string) (*Spec, strictyaml.Positions, error) {
	var s Spec
	pos, err := strictyaml.Decode(data, name, &s)
	if err != nil {
		return nil, nil, err
	}
	return &s, pos, nil
}

// check normalises s and checks the pair-level rules; errors are located
// with pos (which may be empty) and prefixed with name.
func (s *Spec) check(pos strictyaml.Positions, name string) error {
	if err := s.Normalize(); err != nil {
		return pos.Locate(err, name)
	}
	// Check the pair-level rules now, where the errors can point at lines
	// of the pair file; the secrets do not exist yet, so stand-ins that
	// pass validation take their place.
	if _, err := s.PairConfig(s.Nodes[0].Name, placeholderSecrets); err != nil {
		return pos.Locate(err, name)
	}
	return nil
}

// placeholderSecrets satisfy pairconfig.Validate; they are used only to
// check a pair file before its real secrets are generated.
var placeholderSecrets = pairconfig.Secrets{
	ReplicationPassword: "placeholder-replication",
	K3sToken:            "placeholder-k3s-token",
	PairKey:             "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
}

// fieldErr builds a field error for Normalize.
func fieldErr(path, format string, args ...any) error {
	return &strictyaml.FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Normalize fills defaults and checks the spec: each problem is a
// *strictyaml.FieldError naming the pair-file field. The pair-level rules
// (distinct names and addresses, VIP inside the subnet, ...) are checked
// again by pairconfig.Validate when the configuration is built.
func (s *Spec) Normalize() error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }

	s.Pair = strings.TrimSpace(s.Pair)
	if s.Pair == "" {
		add("pair", "missing, expected the pair's name, a DNS label such as \"store-17\"")
	}
	if s.User == "" {
		s.User = DefaultUser
	}
	if !validUser(s.User) {
		add("user", "%q is not a valid user name, expected lower-case letters, digits, '-' or '_', starting with a letter", s.User)
	} else if s.User == "root" {
		add("user", "root is not allowed, expected an unprivileged operator account (it gets sudo)")
	}
	var bits int
	for i := range s.Nodes {
		n := &s.Nodes[i]
		p := fmt.Sprintf("nodes[%d]", i)
		if n.Name == "" {
			add(p+".name", "missing, expected the node's name, a DNS label such as \"node-a\"")
		}
		if n.Interface == "" {
			n.Interface = s.Interface
		}
		if n.Interface == "" {
			add(p+".interface", "missing, expected the LAN NIC name (set interface: for both nodes or per node), e.g. \"eth0\"")
		}
		if n.Address == "" {
			add(p+".address", "missing, expected the node's LAN address with prefix length, e.g. \"198.18.0.11/24\"")
		} else if pfx, err := netip.ParsePrefix(n.Address); err != nil {
			add(p+".address", "%q is not an address with prefix length, e.g. \"198.18.0.11/24\"", n.Address)
		} else {
			n.Address = pfx.String()
			bits = pfx.Bits()
		}
		if n.MAC != "" {
			mac, err := normMAC(n.MAC)
			if err != nil {
				add(p+".mac", "%q is not a MAC address, expected e.g. \"52:54:00:12:34:56\"", n.MAC)
			}
			n.MAC = mac
		}
		if n.LinkMAC != "" {
			mac, err := normMAC(n.LinkMAC)
			if err != nil {
				add(p+".linkMAC", "%q is not a MAC address, expected e.g. \"52:54:00:12:34:57\"", n.LinkMAC)
			}
			n.LinkMAC = mac
		}
		if n.Link != "" {
			if n.LinkInterface == "" {
				n.LinkInterface = s.LinkInterface
			}
			if pfx, err := netip.ParsePrefix(n.Link); err != nil {
				add(p+".link", "%q is not an address with prefix length, e.g. \"198.19.0.1/30\"", n.Link)
			} else {
				n.Link = pfx.String()
			}
			if n.LinkInterface == "" {
				add(p+".linkInterface", "missing, the direct link needs its NIC name (linkInterface: for both nodes or per node)")
			}
		} else if n.LinkMAC != "" {
			add(p+".linkMAC", "set without %s.link, expected both or neither", p)
		}
		if n.Hostname != "" && !pairconfig.IsDNSLabel(n.Hostname) {
			add(p+".hostname", "%q is not a DNS label, expected 1-63 of a-z, 0-9 and '-'", n.Hostname)
		}
	}
	if s.Nodes[0].MAC != "" && s.Nodes[0].MAC == s.Nodes[1].MAC {
		add("nodes[1].mac", "%s is also the MAC of nodes[0], expected the MAC of another machine", s.Nodes[1].MAC)
	}
	if s.VIP == "" {
		add("vip", "missing, expected an unused address in the nodes' subnet, e.g. \"198.18.0.10\"")
	} else {
		v := s.VIP
		if !strings.Contains(v, "/") && bits > 0 {
			v = fmt.Sprintf("%s/%d", v, bits)
		}
		if pfx, err := netip.ParsePrefix(v); err != nil {
			add("vip", "%q is not an address (optionally with prefix length), e.g. \"198.18.0.10\"", s.VIP)
		} else {
			s.VIP = pfx.String()
		}
	}
	if s.Gateway == "" {
		add("gateway", "missing, expected the LAN's default gateway, e.g. \"198.18.0.1\" (it is also the default witness)")
	} else if a, err := netip.ParseAddr(s.Gateway); err != nil {
		add("gateway", "%q is not an IP address, expected e.g. \"198.18.0.1\"", s.Gateway)
	} else {
		s.Gateway = a.String()
	}
	if s.Witness != "" {
		if a, err := netip.ParseAddr(s.Witness); err != nil {
			add("witness", "%q is not an IP address, expected a third device both nodes reach", s.Witness)
		} else {
			s.Witness = a.String()
		}
	}
	for i, d := range s.DNS {
		if a, err := netip.ParseAddr(d); err != nil {
			add(fmt.Sprintf("dns[%d]", i), "%q is not an IP address, expected a name server address", d)
		} else {
			s.DNS[i] = a.String()
		}
	}
	for i, d := range s.SearchDomains {
		if !isDomain(d) {
			add(fmt.Sprintf("searchDomains[%d]", i), "%q is not a domain name", d)
		}
	}
	if s.Domain != "" && !isDomain(s.Domain) {
		add("domain", "%q is not a domain name, expected e.g. \"edge.example.net\"", s.Domain)
	}
	if s.VRRPID == 0 && s.Pair != "" {
		s.VRRPID = DeriveVRRPID(s.Pair)
	}
	if len(s.SSHAuthorizedKeys) == 0 {
		add("sshAuthorizedKeys", "missing, expected at least one OpenSSH public key (the only way to log in)")
	}
	for i, k := range s.SSHAuthorizedKeys {
		key, err := ParseAuthorizedKey(k)
		if err != nil {
			add(fmt.Sprintf("sshAuthorizedKeys[%d]", i), "%v", err)
			continue
		}
		s.SSHAuthorizedKeys[i] = key.String()
	}
	if s.InitialPrimary == "" {
		s.InitialPrimary = s.Nodes[0].Name
	}
	return errors.Join(errs...)
}

// DeriveVRRPID picks a VRRP router id 1..255 from the pair name, so two
// pairs on one LAN are unlikely to collide without anyone choosing ids.
func DeriveVRRPID(pair string) int {
	h := sha256.Sum256([]byte("edgepair-vrrp:" + pair))
	return int(h[0])%255 + 1
}

func normMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return s, err
	}
	if len(hw) != 6 {
		return s, errors.New("not a 6-byte MAC")
	}
	return hw.String(), nil
}

func validUser(s string) bool {
	if s == "" || len(s) > 32 || !(s[0] >= 'a' && s[0] <= 'z') {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func isDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !pairconfig.IsDNSLabel(l) {
			return false
		}
	}
	return true
}

// Hostname is the node's hostname (its name unless overridden).
func (n SpecNode) hostname() string {
	if n.Hostname != "" {
		return n.Hostname
	}
	return n.Name
}

// PairConfig builds the pair configuration for node self from the spec
// and the secrets, applies defaults and validates it; errors name the
// pair-file fields where they map to one.
func (s *Spec) PairConfig(self string, sec pairconfig.Secrets) (*pairconfig.Config, error) {
	c := &pairconfig.Config{
		Version:        pairconfig.Version,
		Pair:           s.Pair,
		Self:           self,
		InitialPrimary: s.InitialPrimary,
		Secrets:        sec,
	}
	for i, n := range s.Nodes {
		c.Nodes[i] = pairconfig.Node{Name: n.Name, Interface: n.Interface, LinkInterface: n.LinkInterface}
		c.Nodes[i].Address, _ = netip.ParsePrefix(n.Address)
		if n.Link != "" {
			l, _ := netip.ParsePrefix(n.Link)
			c.Nodes[i].Link = &l
		}
	}
	c.VIP.Address, _ = netip.ParsePrefix(s.VIP)
	c.VIP.VRRPID = s.VRRPID
	c.Witness.Gateway, _ = netip.ParseAddr(s.Gateway)
	if s.Witness != "" {
		c.Witness.Address, _ = netip.ParseAddr(s.Witness)
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, specPaths(err)
	}
	return c, nil
}

// specPaths renames pair-configuration field paths to the pair file's.
func specPaths(err error) error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, specPaths(e))
		}
		return errors.Join(out...)
	}
	var fe *strictyaml.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	c := *fe
	for from, to := range map[string]string{
		"vip.address":     "vip",
		"vip.vrrpID":      "vrrpID",
		"witness.gateway": "gateway",
		"witness.address": "witness",
	} {
		if c.Path == from {
			c.Path = to
		}
	}
	// Messages about the VIP in the pair file may be without prefix.
	return &c
}
