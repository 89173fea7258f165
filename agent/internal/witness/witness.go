// Package witness pings the witness (by default the LAN gateway) with ICMP
// echo over a raw socket and reports whether it answered recently. It is an
// isolation heuristic only: a node that reaches neither its peer nor the
// witness assumes it is the isolated one. The gateway holds no state, so it
// can never arbitrate a partition (see research/ha.md §4c).
package witness

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// Pinger implements ha.Witness (and, with Source set to the VIP,
// ha.VIPEcho).
//
// With Source set, the echo requests leave from that address (the raw socket
// is bound to it); a probe is sent only while Source is a local address, so a
// pinger whose Source is the VIP probes only on the node that holds it. The
// gateway answers to the MAC address its neighbour table holds for the
// source: echoes from the VIP are answered only while the gateway still
// believes this node owns the VIP.
type Pinger struct {
	Addr     netip.Addr
	Source   netip.Addr    // zero: the kernel picks the source address
	Interval time.Duration // between probes
	Window   time.Duration // OK if a reply arrived within this long
	Log      *slog.Logger

	mu         sync.Mutex
	lastOK     time.Time // reply received
	lastOKSent time.Time // when the last answered probe was sent
	fails      int       // probes sent since the last answered one
}

// OK reports whether the witness answered within Window.
func (p *Pinger) OK() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Since(p.lastOK) < p.Window
}

// Echo reports when the last answered probe was sent and how many probes
// have been sent and left unanswered since. The count restarts whenever a
// probe cannot be sent (Source not local).
func (p *Pinger) Echo() (lastOKSent time.Time, failsInRow int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastOKSent, p.fails
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
	if p.Source.IsValid() && !p.Source.Is4() {
		return fmt.Errorf("witness source %s: only IPv4 is supported", p.Source)
	}
	var rb [2]byte
	if _, err := rand.Read(rb[:]); err != nil {
		return fmt.Errorf("witness: echo id: %w", err)
	}
	// a random id: several pingers (and other agents' pingers on a shared
	// segment) see each other's replies on their raw sockets
	id := binary.BigEndian.Uint16(rb[:])
	bind := "0.0.0.0"
	if p.Source.IsValid() {
		bind = p.Source.String()
	}
	var c net.PacketConn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if c != nil {
			c.Close()
		}
	})
	defer stop()
	dst := &net.IPAddr{IP: net.IP(p.Addr.AsSlice())}
	buf := make([]byte, 1500)
	var seq uint16
	for ctx.Err() == nil {
		seq++
		sent := time.Now()
		deadline := sent.Add(p.Interval)
		if c == nil {
			nc, err := net.ListenPacket("ip4:icmp", bind)
			if err != nil && (!p.Source.IsValid() || errors.Is(err, os.ErrPermission)) {
				return fmt.Errorf("witness: raw ICMP socket: %w", err)
			}
			if err != nil {
				// Source is not (yet, any more) a local address
				p.resetFails()
			} else {
				p.mu.Lock()
				c = nc
				p.mu.Unlock()
			}
		}
		if c != nil {
			if _, err := c.WriteTo(EchoRequest(id, seq, []byte("edgepair")), dst); err != nil {
				p.Log.Debug("witness probe send failed", "err", err, "source", bind)
				if p.Source.IsValid() {
					p.resetFails()
					p.mu.Lock()
					c.Close()
					c = nil
					p.mu.Unlock()
				}
			} else if p.await(c, buf, id, seq, deadline) {
				p.mu.Lock()
				p.lastOK, p.lastOKSent, p.fails = time.Now(), sent, 0
				p.mu.Unlock()
			} else {
				p.mu.Lock()
				p.fails++
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

func (p *Pinger) resetFails() {
	p.mu.Lock()
	p.fails = 0
	p.mu.Unlock()
}

// await reads replies until deadline and reports whether the reply to
// (id, seq) from the witness arrived.
func (p *Pinger) await(c net.PacketConn, buf []byte, id, seq uint16, deadline time.Time) bool {
	_ = c.SetReadDeadline(deadline)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return false // deadline (or closed)
		}
		rid, rseq, ok := parseReply(buf[:n])
		fa, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		if ok && rid == id && rseq == seq && fa.Unmap() == p.Addr {
			return true
		}
	}
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
