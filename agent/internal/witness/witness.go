// Package witness pings the witness (by default the LAN gateway) with ICMP
// echo over a raw socket and reports whether it answered recently. It is an
// isolation heuristic only: a node that reaches neither its peer nor the
// witness assumes it is the isolated one. The gateway holds no state, so it
// can never arbitrate a partition (see research/ha.md §4c).
package witness

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// Pinger implements ha.Witness.
type Pinger struct {
	Addr     netip.Addr
	Interval time.Duration // between probes
	Window   time.Duration // OK if a reply arrived within this long
	Log      *slog.Logger

	mu     sync.Mutex
	lastOK time.Time
}

// OK reports whether the witness answered within Window.
func (p *Pinger) OK() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Since(p.lastOK) < p.Window
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// EchoRequest builds an ICMPv4 echo request.
func EchoRequest(id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

// parseReply returns id and seq of an ICMPv4 echo reply (the raw "ip4:icmp"
// socket delivers the ICMP message without the IP header).
func parseReply(b []byte) (id, seq uint16, ok bool) {
	if len(b) < 8 || b[0] != 0 || b[1] != 0 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]), true
}

// Run probes until ctx ends. It needs CAP_NET_RAW (the agent runs as root).
func (p *Pinger) Run(ctx context.Context) error {
	if !p.Addr.Is4() {
		return fmt.Errorf("witness %s: only IPv4 is supported", p.Addr)
	}
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return fmt.Errorf("witness: raw ICMP socket: %w", err)
	}
	go func() { <-ctx.Done(); c.Close() }()
	id := uint16(os.Getpid())
	dst := &net.IPAddr{IP: net.IP(p.Addr.AsSlice())}
	buf := make([]byte, 1500)
	var seq uint16
	for ctx.Err() == nil {
		seq++
		sent := time.Now()
		if _, err := c.WriteTo(EchoRequest(id, seq, []byte("edgepair")), dst); err != nil {
			p.Log.Debug("witness probe send failed", "err", err)
		}
		deadline := sent.Add(p.Interval)
		_ = c.SetReadDeadline(deadline)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // deadline: next probe
			}
			rid, rseq, ok := parseReply(buf[:n])
			fa, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			if ok && rid == id && rseq == seq && fa.Unmap() == p.Addr {
				p.mu.Lock()
				p.lastOK = time.Now()
				p.mu.Unlock()
			}
		}
		if d := time.Until(deadline); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
	}
	return ctx.Err()
}

// TCPProbe implements ha.Probe: PostgreSQL answers through the VIP when a
// TCP connection to VIP:port is accepted.
type TCPProbe struct {
	Addr    netip.AddrPort
	Timeout time.Duration
}

// VIPAnswers dials the VIP.
func (t *TCPProbe) VIPAnswers(ctx context.Context) bool {
	d := net.Dialer{Timeout: t.Timeout}
	c, err := d.DialContext(ctx, "tcp", t.Addr.String())
	if err != nil {
		return false
	}
	c.Close()
	return true
}
