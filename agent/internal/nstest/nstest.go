// Package nstest builds throw-away test networks of Linux network namespaces
// for the agent's integration tests: a bridge (multicast snooping off) in its
// own namespace, two node namespaces with a LAN interface on the bridge and a
// direct link between them, and a client namespace that is also the nodes'
// gateway and witness. Addresses come from 198.18.0.0/15 with a random third
// octet per network. Nothing is created in the root namespace; everything is
// removed by Close (register it with t.Cleanup).
//
// It needs root and iproute2; callers skip otherwise.
package nstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// Net is one test network.
type Net struct {
	Prefix string // namespace name prefix, "ep-<random>"
	Octet  int    // the x in 198.18.x.0/24 (LAN) and 198.19.x.0/24 (link)
	Bridge string // namespace holding the bridge
	Nodes  [2]string
	Client string // client, gateway and witness namespace
	names  []string
}

// Node addresses: LAN .11/.12, link .1/.2, VIP .10, gateway (client) .1.
func (n *Net) LAN(i int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("198.18.%d.%d/24", n.Octet, 11+i))
}

// Link is node i's address on the direct link.
func (n *Net) Link(i int) netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("198.19.%d.%d/24", n.Octet, 1+i))
}

// VIP is the pair's virtual IP.
func (n *Net) VIP() netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("198.18.%d.10/24", n.Octet))
}

// Gateway is the client namespace's address (the nodes' gateway and witness).
func (n *Net) Gateway() netip.Addr { return netip.MustParseAddr(fmt.Sprintf("198.18.%d.1", n.Octet)) }

// IP runs `ip` with args (in the root namespace's view, use -n to target).
func IP(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Exec runs a command inside namespace ns and returns its combined output.
func Exec(ns string, name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), ns, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// New creates the network. On error everything created so far is removed.
func New() (n *Net, err error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	o, err := rand.Int(rand.Reader, big.NewInt(254))
	if err != nil {
		return nil, err
	}
	n = &Net{Prefix: "ep-" + hex.EncodeToString(b), Octet: int(o.Int64()) + 1}
	n.Bridge, n.Nodes, n.Client = n.Prefix+"-br", [2]string{n.Prefix + "-a", n.Prefix + "-b"}, n.Prefix+"-c"
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	for _, ns := range []string{n.Bridge, n.Nodes[0], n.Nodes[1], n.Client} {
		if err := IP("netns", "add", ns); err != nil {
			return nil, err
		}
		n.names = append(n.names, ns)
		if err := IP("-n", ns, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	steps := [][]string{
		{"-n", n.Bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"},
		{"-n", n.Bridge, "link", "set", "br0", "up"},
	}
	for i, ns := range []string{n.Nodes[0], n.Nodes[1], n.Client} {
		port := fmt.Sprintf("p%d", i)
		steps = append(steps,
			[]string{"-n", n.Bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", n.Bridge, "link", "set", port, "master", "br0", "up"},
			[]string{"-n", ns, "link", "set", "eth0", "up"},
		)
	}
	steps = append(steps,
		[]string{"-n", n.Nodes[0], "addr", "add", n.LAN(0).String(), "dev", "eth0"},
		[]string{"-n", n.Nodes[1], "addr", "add", n.LAN(1).String(), "dev", "eth0"},
		[]string{"-n", n.Client, "addr", "add", n.Gateway().String() + "/24", "dev", "eth0"},
		// the direct replication link between the nodes
		[]string{"-n", n.Nodes[0], "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", n.Nodes[1]},
		[]string{"-n", n.Nodes[0], "addr", "add", n.Link(0).String(), "dev", "eth1"},
		[]string{"-n", n.Nodes[1], "addr", "add", n.Link(1).String(), "dev", "eth1"},
		[]string{"-n", n.Nodes[0], "link", "set", "eth1", "up"},
		[]string{"-n", n.Nodes[1], "link", "set", "eth1", "up"},
		[]string{"-n", n.Nodes[0], "route", "add", "default", "via", n.Gateway().String()},
		[]string{"-n", n.Nodes[1], "route", "add", "default", "via", n.Gateway().String()},
	)
	for _, s := range steps {
		if err := IP(s...); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// Close deletes the namespaces (and with them every interface in them).
// Processes must have been stopped before.
func (n *Net) Close() {
	for _, ns := range n.names {
		_ = IP("netns", "del", ns)
	}
	n.names = nil
}

// SetLinks brings node i's interfaces (LAN and direct link) up or down.
func (n *Net) SetLinks(i int, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	for _, dev := range []string{"eth0", "eth1"} {
		if err := IP("-n", n.Nodes[i], "link", "set", dev, state); err != nil {
			return err
		}
	}
	if up {
		// a downed interface loses its routes
		_ = IP("-n", n.Nodes[i], "route", "replace", "default", "via", n.Gateway().String())
	}
	return nil
}

// Dialer returns a dial function whose sockets live in namespace ns (a
// socket stays in the namespace it was created in).
func Dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			runtime.LockOSThread()
			// the thread is tainted by setns: let it die with the goroutine
			orig, err := netns.Get()
			if err != nil {
				ch <- res{nil, err}
				return
			}
			defer orig.Close()
			h, err := netns.GetFromName(ns)
			if err != nil {
				ch <- res{nil, fmt.Errorf("namespace %s: %w", ns, err)}
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				ch <- res{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if netns.Set(orig) == nil {
				runtime.UnlockOSThread()
			}
			ch <- res{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// Partition is a real partition between the two nodes: their bridge ports
// are isolated from each other (`bridge link set ... isolated on`: no frame,
// not even a broadcast, passes between them; each still reaches the client
// namespace, which is the gateway and witness) and the direct link is down.
// The standby then reaches neither the peer nor the VIP. on=false heals it.
func (n *Net) Partition(on bool) error {
	iso, state := "on", "down"
	if !on {
		iso, state = "off", "up"
	}
	for i := range 2 {
		out, err := exec.Command("bridge", "-n", n.Bridge, "link", "set", "dev", fmt.Sprintf("p%d", i), "isolated", iso).CombinedOutput()
		if err != nil {
			return fmt.Errorf("bridge link set dev p%d isolated %s: %w: %s", i, iso, err, strings.TrimSpace(string(out)))
		}
		if err := IP("-n", n.Nodes[i], "link", "set", "eth1", state); err != nil {
			return err
		}
	}
	return nil
}

// FilterNodeAddrs is an asymmetric cut: the direct link down and LAN traffic
// between the node addresses blackholed, while traffic from the VIP passes,
// so the standby still reaches PostgreSQL through the VIP. on=false heals it.
func (n *Net) FilterNodeAddrs(on bool) error {
	op, state := "add", "down"
	if !on {
		op, state = "del", "up"
	}
	for i := range 2 {
		peer := n.LAN(1 - i).Addr().String()
		steps := [][]string{
			{"-n", n.Nodes[i], "route", op, "blackhole", peer + "/32", "table", "100"},
			{"-n", n.Nodes[i], "rule", op, "from", n.VIP().Addr().String(), "to", peer, "lookup", "main", "priority", "100"},
			{"-n", n.Nodes[i], "rule", op, "to", peer, "lookup", "100", "priority", "101"},
			{"-n", n.Nodes[i], "link", "set", "eth1", state},
		}
		for _, s := range steps {
			if err := IP(s...); err != nil {
				return err
			}
		}
	}
	return nil
}
