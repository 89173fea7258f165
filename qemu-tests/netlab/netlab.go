// Package netlab builds the test network of the QEMU pair tests entirely inside
// network namespaces it creates: a "switch" namespace holding a bridge (multicast
// snooping off, so VRRP multicast reaches every port) with one tap per VM, and any
// number of attached namespaces (the client side) joined to the bridge by veth pairs
// created directly inside the namespaces. Nothing is created in the root namespace,
// and Close removes everything. Addresses belong in 198.18.0.0/15.
//
// It drives iproute2 (`ip`, `bridge`), so what it does can be repeated by hand, and
// needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
)

// TestRange is the address range every lab address must be in (RFC 2544).
var TestRange = netip.MustParsePrefix("198.18.0.0/15")

// Lab is one test network.
type Lab struct {
	prefix   string       // unique name prefix, e.g. "ep4242a"
	Switch   string       // name of the namespace holding the bridge and the taps
	Bridge   string       // bridge device inside Switch
	Gateway  netip.Prefix // the bridge's own address (the pair's gateway/witness)
	attached []string     // namespaces created by AddNamespace
	taps     []string

	mu     sync.Mutex
	closed bool
}

var seq struct {
	sync.Mutex
	n int
}

// New creates the switch namespace with its bridge, whose address is gateway (for
// example 198.18.10.1/24: the VMs use it as gateway and witness).
func New(ctx context.Context, gateway netip.Prefix) (*Lab, error) {
	if !TestRange.Contains(gateway.Addr()) || gateway.Bits() < TestRange.Bits() {
		return nil, fmt.Errorf("netlab: gateway %s is outside %s (the range reserved for network tests)", gateway, TestRange)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("netlab: needs root (network namespaces)")
	}
	seq.Lock()
	seq.n++
	n := seq.n
	seq.Unlock()
	prefix := "ep" + strconv.Itoa(os.Getpid()) + string(rune('a'+(n-1)%26))
	l := &Lab{prefix: prefix, Switch: prefix + "-sw", Bridge: "br0", Gateway: gateway}
	steps := [][]string{
		{"ip", "netns", "add", l.Switch},
		{"ip", "-n", l.Switch, "link", "set", "lo", "up"},
		{"ip", "-n", l.Switch, "link", "add", l.Bridge, "address", "02:00:c6:12:00:01", "type", "bridge", "mcast_snooping", "0", "stp_state", "0", "forward_delay", "0"},
		{"ip", "-n", l.Switch, "addr", "add", gateway.String(), "dev", l.Bridge},
		{"ip", "-n", l.Switch, "link", "set", l.Bridge, "up"},
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			_ = l.Close()
			return nil, err
		}
	}
	return l, nil
}

// Prefix is the unique name prefix of this lab's namespaces.
func (l *Lab) Prefix() string { return l.prefix }

// NS returns the full name of an attached namespace created with AddNamespace(name).
func (l *Lab) NS(name string) string { return l.prefix + "-" + name }

// AddTap creates a tap device (for a QEMU NIC) in the switch namespace, attached to
// the bridge. QEMU must run in the switch namespace to open it (harness.Config.NetNS).
func (l *Lab) AddTap(ctx context.Context, name string) error {
	if len(name) > 15 {
		return fmt.Errorf("netlab: tap name %q longer than 15 characters", name)
	}
	for _, s := range [][]string{
		{"ip", "-n", l.Switch, "tuntap", "add", "dev", name, "mode", "tap"},
		{"ip", "-n", l.Switch, "link", "set", name, "master", l.Bridge},
		{"ip", "-n", l.Switch, "link", "set", name, "up"},
	} {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	l.mu.Lock()
	l.taps = append(l.taps, name)
	l.mu.Unlock()
	return nil
}

// AddNamespace creates a namespace NS(name) joined to the bridge by a veth pair
// (eth0 inside it, the switch end called "v-<name>"), with addr on eth0 and the
// gateway as default route. The veth is created inside the switch namespace with its
// peer directly in the new namespace: it never exists in the root namespace.
func (l *Lab) AddNamespace(ctx context.Context, name string, addr netip.Prefix) (string, error) {
	if !TestRange.Contains(addr.Addr()) {
		return "", fmt.Errorf("netlab: address %s for %s is outside %s", addr, name, TestRange)
	}
	ns := l.NS(name)
	sw := "v-" + name
	if len(sw) > 15 {
		return "", fmt.Errorf("netlab: namespace name %q too long (switch port %q over 15 characters)", name, sw)
	}
	if err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return "", err
	}
	l.mu.Lock()
	l.attached = append(l.attached, ns)
	l.mu.Unlock()
	for _, s := range [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", l.Switch, "link", "add", sw, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", l.Switch, "link", "set", sw, "master", l.Bridge},
		{"ip", "-n", l.Switch, "link", "set", sw, "up"},
		{"ip", "-n", ns, "addr", "add", addr.String(), "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", l.Gateway.Addr().String()},
	} {
		if err := run(ctx, s...); err != nil {
			return "", err
		}
	}
	return ns, nil
}

// Isolate partitions bridge ports from each other (tap names or "v-<name>" veth
// ends): isolated ports cannot exchange frames with one another but still reach
// every non-isolated port (the client side and the bridge itself). With both VMs'
// taps isolated, the two VMs are partitioned while both still reach the client.
func (l *Lab) Isolate(ctx context.Context, ports ...string) error {
	return l.setIsolated(ctx, "on", ports)
}

// Heal undoes Isolate.
func (l *Lab) Heal(ctx context.Context, ports ...string) error {
	return l.setIsolated(ctx, "off", ports)
}

func (l *Lab) setIsolated(ctx context.Context, onOff string, ports []string) error {
	for _, p := range ports {
		if err := run(ctx, "ip", "netns", "exec", l.Switch, "bridge", "link", "set", "dev", p, "isolated", onOff); err != nil {
			return err
		}
	}
	return nil
}

// SetLink sets a bridge port (tap or veth end) up or down in the switch namespace;
// a tap set down cuts its VM off the network entirely.
func (l *Lab) SetLink(ctx context.Context, port string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return run(ctx, "ip", "-n", l.Switch, "link", "set", port, state)
}

// Command returns a command that runs argv inside namespace ns (ip netns exec).
func Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// Do runs fn on an OS thread switched into namespace ns. Sockets created inside fn
// (net.Dial, net.Listen) stay in ns after Do returns, so a Go client in the test
// process can talk from the client namespace. If the thread cannot be switched back
// it is left locked and therefore discarded by the Go runtime.
func Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: current namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: enter %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the thread dies with this goroutine instead of being reused.
			errc <- errors.Join(ferr, fmt.Errorf("netlab: leave %s: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Dialer returns a DialContext function whose connections are made from namespace
// ns (for http.Transport.DialContext or pgx's DialFunc).
func Dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Close deletes every namespace of the lab (which destroys the bridge, taps and
// veths inside them). Processes still running in them keep the namespace alive until
// they exit, so stop QEMU first. Safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	names := append([]string{}, l.attached...)
	l.mu.Unlock()
	names = append(names, l.Switch)
	var errs []error
	for _, ns := range names {
		if err := run(context.Background(), "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Namespaces lists the named network namespaces that exist now (ip netns list).
func Namespaces(ctx context.Context) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return nil, fmt.Errorf("netlab: ip netns list: %w", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}
