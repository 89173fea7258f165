// Package netvip ties the virtual IP to the agent's decision: it writes
// keepalived's track file (0 = may hold the VIP, 1 = FAULT) and checks and
// removes the VIP on the interface over netlink, because keepalived killed
// with -9 leaves the address behind.
package netvip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
)

// VIP implements ha.VIP.
type VIP struct {
	Iface     string
	Addr      netip.Prefix
	TrackFile string

	mu   sync.Mutex
	last string
}

// SetEligible writes the track file when its content must change.
func (v *VIP) SetEligible(ok bool) error {
	want := "1\n"
	if ok {
		want = "0\n"
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.last == want {
		if b, err := os.ReadFile(v.TrackFile); err == nil && string(b) == want {
			return nil
		}
	}
	// Written in place (not renamed): keepalived watches the file with
	// inotify and reads it on close.
	if err := os.WriteFile(v.TrackFile, []byte(want), 0o644); err != nil {
		return fmt.Errorf("track file: %w", err)
	}
	v.last = want
	return nil
}

func (v *VIP) link() (netlink.Link, error) {
	l, err := netlink.LinkByName(v.Iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", v.Iface, err)
	}
	return l, nil
}

// Held reports whether the VIP is configured on the interface.
func (v *VIP) Held() (bool, error) {
	l, err := v.link()
	if err != nil {
		return false, err
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", v.Iface, err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == v.Addr.Addr() {
			return true, nil
		}
	}
	return false, nil
}

// Release removes the VIP from the interface.
func (v *VIP) Release() error {
	l, err := v.link()
	if err != nil {
		return err
	}
	ipn := &net.IPNet{IP: net.IP(v.Addr.Addr().AsSlice()), Mask: net.CIDRMask(v.Addr.Bits(), v.Addr.Addr().BitLen())}
	if err := netlink.AddrDel(l, &netlink.Addr{IPNet: ipn}); err != nil {
		if errors.Is(err, os.ErrNotExist) || strings.Contains(err.Error(), "cannot assign") {
			return nil
		}
		return fmt.Errorf("remove %s from %s: %w", v.Addr, v.Iface, err)
	}
	return nil
}

// ARPAnnounceNodeAddr sets net.ipv4.conf.<iface>.arp_announce to 2: ARP
// requests from this node name the interface's primary (node) address as
// sender, never the VIP. Otherwise a request the node sends while it holds
// the VIP could name the VIP, and the gateway would update its neighbour
// entry for the VIP to this node: a partitioned old primary would take the
// VIP back at the gateway from the new primary. sysctlDir is normally
// /proc/sys (per network namespace).
func ARPAnnounceNodeAddr(sysctlDir, iface string) error {
	if iface == "" || iface == "." || iface == ".." || strings.Contains(iface, "/") {
		return fmt.Errorf("arp_announce: bad interface name %q", iface)
	}
	p := sysctlDir + "/net/ipv4/conf/" + iface + "/arp_announce"
	if err := os.WriteFile(p, []byte("2\n"), 0o644); err != nil {
		return fmt.Errorf("arp_announce: %w", err)
	}
	return nil
}
