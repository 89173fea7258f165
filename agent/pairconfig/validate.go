package pairconfig

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/edgepair/edgepair/agent/pairconfig/strictyaml"
)

// Secret length limits (characters). Generated secrets are far inside.
const (
	MinSecretLen = 16
	MaxSecretLen = 256
)

// Validate checks a configuration (after ApplyDefaults) and returns every
// problem found, each a *strictyaml.FieldError naming the field path, joined
// with errors.Join.
func (c *Config) Validate() error {
	v := &validator{}
	v.check(c)
	return errors.Join(v.errs...)
}

type validator struct{ errs []error }

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &strictyaml.FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// IsDNSLabel reports whether s is an RFC 1123 label: 1-63 characters of
// lower-case letters, digits and '-', not starting or ending with '-'.
func IsDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// IsInterfaceName reports whether s is a valid Linux interface name.
func IsInterfaceName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return false
		}
	}
	return true
}

// hostAddr checks that p is a usable host address with prefix.
func (v *validator) hostAddr(path string, p netip.Prefix) bool {
	if !p.IsValid() {
		v.add(path, `missing, expected an address with prefix length, e.g. "198.18.0.11/24"`)
		return false
	}
	a := p.Addr()
	if a.Zone() != "" {
		v.add(path, "%s has a zone, expected a plain address", p)
		return false
	}
	if a.Is4In6() {
		v.add(path, "%s is an IPv4-mapped IPv6 address, write it as IPv4", p)
		return false
	}
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.IsLinkLocalUnicast() {
		v.add(path, "%s is not a unicast host address", p)
		return false
	}
	if p.Bits() == a.BitLen() || a.Is4() && p.Bits() < 8 || a.Is6() && p.Bits() < 16 {
		v.add(path, "prefix length /%d leaves no usable subnet, expected the subnet's length, e.g. /24", p.Bits())
		return false
	}
	if a.Is4() && p.Bits() <= 30 {
		if a == p.Masked().Addr() {
			v.add(path, "%s is the network address of its subnet, expected a host address", p)
			return false
		}
		if a == lastAddr(p) {
			v.add(path, "%s is the broadcast address of its subnet, expected a host address", p)
			return false
		}
	}
	return true
}

// lastAddr is the highest address in p's subnet.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (v *validator) check(c *Config) {
	if c.Version != Version {
		v.add("version", "unsupported version %d, expected %d", c.Version, Version)
	}
	if !IsDNSLabel(c.Pair) {
		v.add("pair", "%q is not a DNS label, expected 1-63 of a-z, 0-9 and '-', e.g. \"store-17\"", c.Pair)
	}
	names := [2]string{c.Nodes[0].Name, c.Nodes[1].Name}
	for i, n := range c.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		if !IsDNSLabel(n.Name) {
			v.add(p+".name", "%q is not a DNS label, expected 1-63 of a-z, 0-9 and '-', e.g. \"node-a\"", n.Name)
		}
		if !IsInterfaceName(n.Interface) {
			v.add(p+".interface", "%q is not an interface name, expected e.g. \"eth0\" or \"ens192\" (1-15 characters)", n.Interface)
		}
	}
	if names[0] != "" && names[0] == names[1] {
		v.add("nodes[1].name", "%q is also the name of nodes[0], the two nodes need different names", names[1])
	}
	switch {
	case c.Self == "":
		v.add("self", "missing, expected the name of this node: %q or %q", names[0], names[1])
	case c.Self != names[0] && c.Self != names[1]:
		v.add("self", "%q is not one of the nodes, expected %q or %q", c.Self, names[0], names[1])
	}
	switch {
	case c.InitialPrimary == "":
		v.add("initialPrimary", "missing, expected the node that runs initdb on first boot: %q or %q", names[0], names[1])
	case c.InitialPrimary != names[0] && c.InitialPrimary != names[1]:
		v.add("initialPrimary", "%q is not one of the nodes, expected %q or %q", c.InitialPrimary, names[0], names[1])
	}

	v.checkAddresses(c)
	v.checkSecrets(c.Secrets)
	v.checkTimeouts(c.Timeouts)
	v.checkPorts(c.Ports)
}

func (v *validator) checkAddresses(c *Config) {
	ok0 := v.hostAddr("nodes[0].address", c.Nodes[0].Address)
	ok1 := v.hostAddr("nodes[1].address", c.Nodes[1].Address)
	a0, a1 := c.Nodes[0].Address, c.Nodes[1].Address
	subnet := a0.Masked()
	lanOK := ok0 && ok1
	if lanOK {
		switch {
		case a0.Addr() == a1.Addr():
			v.add("nodes[1].address", "%s is also the address of nodes[0], the two nodes need different addresses", a1.Addr())
			lanOK = false
		case a0.Bits() != a1.Bits() || a1.Masked() != subnet:
			v.add("nodes[1].address", "%s is not in the same subnet as nodes[0] (%s), expected both nodes on one LAN", a1, subnet)
			lanOK = false
		}
	}
	nodeAddr := func(a netip.Addr) string {
		for i, n := range c.Nodes {
			if n.Address.Addr() == a {
				return fmt.Sprintf("nodes[%d].address", i)
			}
		}
		return ""
	}

	// VIP.
	vip := c.VIP.Address
	if !vip.IsValid() {
		v.add("vip.address", `missing, expected the virtual IP with the LAN's prefix length, e.g. "198.18.0.10/24"`)
	} else if v.hostAddr("vip.address", vip) && lanOK {
		switch {
		case !subnet.Contains(vip.Addr()):
			v.add("vip.address", "%s is outside the nodes' subnet %s, expected an unused address inside it", vip.Addr(), subnet)
		case vip.Bits() != subnet.Bits():
			v.add("vip.address", "prefix length /%d differs from the nodes' /%d, expected %s/%d", vip.Bits(), subnet.Bits(), vip.Addr(), subnet.Bits())
		case nodeAddr(vip.Addr()) != "":
			v.add("vip.address", "%s is the address of %s, expected an unused address", vip.Addr(), nodeAddr(vip.Addr()))
		}
	}
	if c.VIP.VRRPID < 1 || c.VIP.VRRPID > 255 {
		v.add("vip.vrrpID", "%d is out of range, expected a VRRP router id 1..255 unique on the LAN", c.VIP.VRRPID)
	}

	// Witness.
	gw := c.Witness.Gateway
	switch {
	case !gw.IsValid():
		v.add("witness.gateway", `missing, expected the LAN's default gateway, e.g. "198.18.0.1"`)
	case lanOK && !subnet.Contains(gw):
		v.add("witness.gateway", "%s is outside the nodes' subnet %s, expected the gateway on that LAN", gw, subnet)
	case nodeAddr(gw) != "":
		v.add("witness.gateway", "%s is the address of %s, expected the LAN's router", gw, nodeAddr(gw))
	case vip.IsValid() && gw == vip.Addr():
		v.add("witness.gateway", "%s is the VIP, expected the LAN's router", gw)
	}
	w := c.Witness.Address
	switch {
	case !w.IsValid():
		v.add("witness.address", "missing, expected a third device both nodes can reach (defaults to witness.gateway)")
	case w.IsUnspecified() || w.IsMulticast():
		v.add("witness.address", "%s is not a unicast address", w)
	case nodeAddr(w) != "":
		v.add("witness.address", "%s is the address of %s, expected a third device", w, nodeAddr(w))
	case vip.IsValid() && w == vip.Addr():
		v.add("witness.address", "%s is the VIP, expected a third device", w)
	}
	if gw.IsValid() && ok0 && gw.Is4() != a0.Addr().Is4() {
		v.add("witness.gateway", "%s is not of the nodes' address family", gw)
	}

	// Optional direct link: both or neither.
	l0, l1 := c.Nodes[0].Link, c.Nodes[1].Link
	if (l0 == nil) != (l1 == nil) {
		missing := 0
		if l1 == nil {
			missing = 1
		}
		v.add(fmt.Sprintf("nodes[%d].link", missing), "missing, the direct link needs an address on both nodes (or on neither)")
		return
	}
	for i, n := range c.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		if n.Link == nil {
			if n.LinkInterface != "" {
				v.add(p+".linkInterface", "set without %s.link, expected both or neither", p)
			}
			continue
		}
		if !IsInterfaceName(n.LinkInterface) {
			v.add(p+".linkInterface", "%q is not an interface name, expected the direct link's NIC, e.g. \"eth1\"", n.LinkInterface)
		} else if n.LinkInterface == n.Interface {
			v.add(p+".linkInterface", "%q is also the LAN interface, expected a separate NIC for the direct link", n.LinkInterface)
		}
	}
	if l0 == nil {
		return
	}
	okl0 := v.hostAddr("nodes[0].link", *l0)
	okl1 := v.hostAddr("nodes[1].link", *l1)
	if !okl0 || !okl1 {
		return
	}
	switch {
	case l0.Addr() == l1.Addr():
		v.add("nodes[1].link", "%s is also the link address of nodes[0], expected different addresses", l1.Addr())
	case l0.Bits() != l1.Bits() || l0.Masked() != l1.Masked():
		v.add("nodes[1].link", "%s is not in the same subnet as nodes[0].link (%s)", *l1, l0.Masked())
	case lanOK && (subnet.Overlaps(l0.Masked())):
		v.add("nodes[0].link", "subnet %s overlaps the LAN %s, expected a separate subnet for the direct link", l0.Masked(), subnet)
	case ok0 && l0.Addr().Is4() != a0.Addr().Is4():
		v.add("nodes[0].link", "%s is not of the LAN's address family", *l0)
	}
}

func (v *validator) secret(path, s, what string) {
	switch {
	case s == "":
		v.add(path, "missing, expected the generated %s (run `builder seed`; secrets have no default)", what)
	case len(s) < MinSecretLen:
		v.add(path, "too short (%d characters), expected at least %d", len(s), MinSecretLen)
	case len(s) > MaxSecretLen:
		v.add(path, "too long (%d characters), expected at most %d", len(s), MaxSecretLen)
	default:
		for _, r := range s {
			// The secrets end up in primary_conninfo, .pgpass and k3s's
			// config: keep them to characters that need no quoting.
			if r <= ' ' || r > '~' || strings.ContainsRune(`'"\:`, r) {
				v.add(path, "contains %q, expected printable ASCII without spaces, quotes, ':' or '\\'", r)
				return
			}
		}
	}
}

func (v *validator) checkSecrets(s Secrets) {
	v.secret("secrets.replicationPassword", s.ReplicationPassword, "replication password")
	v.secret("secrets.k3sToken", s.K3sToken, "k3s token")
	if s.ReplicationPassword != "" && s.ReplicationPassword == s.K3sToken {
		v.add("secrets.k3sToken", "equals secrets.replicationPassword, expected independent secrets")
	}
	if s.PairKey == "" {
		v.add("secrets.pairKey", "missing, expected the generated pair key (standard base64 of %d random bytes)", PairKeyLen)
	} else if k, err := base64.StdEncoding.DecodeString(s.PairKey); err != nil {
		v.add("secrets.pairKey", "not standard base64 (%v), expected standard base64 of %d random bytes", err, PairKeyLen)
	} else if len(k) != PairKeyLen {
		v.add("secrets.pairKey", "decodes to %d bytes, expected standard base64 of %d random bytes", len(k), PairKeyLen)
	}
}

func (v *validator) checkTimeouts(t Timeouts) {
	hb, dead, fence, promote, degrade := t.Heartbeat.Duration, t.PeerDead.Duration, t.FenceAfter.Duration, t.PromoteAfter.Duration, t.DegradeAfter.Duration
	if hb <= 0 || hb > MaxHeartbeat {
		v.add("timeouts.heartbeat", "%s, expected more than 0 and at most %s", hb, MaxHeartbeat)
		return
	}
	margin := max(MinMargin, 2*hb)
	if dead < 3*hb {
		v.add("timeouts.peerDead", "%s is less than 3 heartbeats (%s), expected at least %s", dead, hb, 3*hb)
	}
	if fence < dead {
		v.add("timeouts.fenceAfter", "%s is shorter than peerDead %s, expected the primary to fence only after the peer is presumed dead", fence, dead)
	}
	if promote < fence+margin {
		v.add("timeouts.promoteAfter", "%s is not at least %s after fenceAfter %s, expected >= %s so the old primary has fenced itself before the standby promotes",
			promote, margin, fence, fence+margin)
	}
	if degrade < promote+dead+margin {
		v.add("timeouts.degradeAfter", "%s is less than promoteAfter %s + peerDead %s + %s, expected >= %s so the primary leaves synchronous replication only after the standby's promotion window has closed",
			degrade, promote, dead, margin, promote+dead+margin)
	}
	if degrade > MaxDegradeAfter {
		v.add("timeouts.degradeAfter", "%s blocks commits too long, expected at most %s (k3s gives up after ~10 s of datastore latency)", degrade, MaxDegradeAfter)
	}
}

func (v *validator) checkPorts(p Ports) {
	seen := map[int]string{}
	for _, f := range []struct {
		path string
		port int
	}{{"ports.postgres", p.Postgres}, {"ports.heartbeat", p.Heartbeat}, {"ports.status", p.Status}} {
		if f.port < 1 || f.port > 65535 {
			v.add(f.path, "%d is out of range, expected 1..65535", f.port)
			continue
		}
		if other, ok := seen[f.port]; ok {
			v.add(f.path, "%d is also %s, expected distinct ports", f.port, other)
		}
		seen[f.port] = f.path
	}
}
