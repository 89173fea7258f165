package heartbeat

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

var key = bytes.Repeat([]byte{7}, 32)

func TestSealOpenRoundTrip(t *testing.T) {
	m := &Message{Node: "a", BootID: "b1", Seq: 3, Term: 9, Role: RolePrimary, LSN: 1 << 33, SyncOn: true, SyncStandby: "b", DegradeInMs: 6000}
	b, err := Seal(key, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Open(key, b)
	if err != nil {
		t.Fatal(err)
	}
	if *got != *m {
		t.Fatalf("got %+v want %+v", got, m)
	}
}

func TestOpenRejectsTamperAndWrongKey(t *testing.T) {
	b, _ := Seal(key, &Message{Node: "a", Term: 1})
	if _, err := Open(bytes.Repeat([]byte{8}, 32), b); err != ErrBadMAC {
		t.Fatalf("wrong key: got %v", err)
	}
	b[10] ^= 1
	if _, err := Open(key, b); err != ErrBadMAC {
		t.Fatalf("tampered: got %v", err)
	}
	if _, err := Open(key, []byte("short")); err == nil {
		t.Fatal("short input accepted")
	}
}

func TestReplay(t *testing.T) {
	var r Replay
	steps := []struct {
		boot string
		seq  uint64
		want bool
	}{{"x", 1, true}, {"x", 1, false}, {"x", 2, true}, {"x", 1, false}, {"y", 1, true}, {"y", 5, true}, {"y", 4, false}}
	for i, s := range steps {
		if got := r.Accept(&Message{BootID: s.boot, Seq: s.seq}); got != s.want {
			t.Fatalf("step %d (%s,%d): got %v", i, s.boot, s.seq, got)
		}
	}
}

func FuzzOpen(f *testing.F) {
	b, _ := Seal(key, &Message{Node: "a", Term: 1})
	f.Add(b)
	f.Add([]byte("EPH1{}"))
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := Open(key, in)
		if err == nil && m == nil {
			t.Fatal("nil message without error")
		}
	})
}

func TestUDPLoopback(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := &UDP{Key: key, Self: "a", Peer: "b", Log: log}
	b := &UDP{Key: key, Self: "b", Peer: "a", Log: log}
	if err := a.Listen(0); err != nil {
		t.Fatal(err)
	}
	if err := b.Listen(0); err != nil {
		t.Fatal(err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	bPort := netip.AddrPortFrom(lo, uint16(b.conn.LocalAddr().(*net.UDPAddr).Port))
	a.Peers = []netip.AddrPort{bPort, bPort} // two "paths": duplicates must be dropped
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan *Message, 10)
	go b.Receive(ctx, func(m *Message, _ netip.Addr) { got <- m })
	defer a.Close()
	for i := uint64(1); i <= 2; i++ {
		if err := a.Send(&Message{Node: "a", BootID: "z", Seq: i, Term: i}); err != nil {
			t.Fatal(err)
		}
	}
	for i := uint64(1); i <= 2; i++ {
		select {
		case m := <-got:
			if m.Seq != i {
				t.Fatalf("got seq %d want %d", m.Seq, i)
			}
		case <-ctx.Done():
			t.Fatal("timeout")
		}
	}
	select {
	case m := <-got:
		t.Fatalf("duplicate delivered: %+v", m)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestMismatchedSeedsAreLogged: issue 5 wants agents with mismatched seeds
// to say so (not silently drop), once per reason rather than per datagram,
// and to deliver nothing to the state machine.
func TestMismatchedSeedsAreLogged(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	b := &UDP{Key: key, Self: "b", Peer: "a", Log: log}
	if err := b.Listen(0); err != nil {
		t.Fatal(err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	bPort := netip.AddrPortFrom(lo, uint16(b.conn.LocalAddr().(*net.UDPAddr).Port))
	otherKey := bytes.Repeat([]byte{9}, len(key))
	wrongKey := &UDP{Key: otherKey, Self: "a", Peer: "b", Log: log, Peers: []netip.AddrPort{bPort}}
	sameName := &UDP{Key: key, Self: "b", Peer: "a", Log: log, Peers: []netip.AddrPort{bPort}}
	for _, u := range []*UDP{wrongKey, sameName} {
		if err := u.Listen(0); err != nil {
			t.Fatal(err)
		}
		defer u.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got := make(chan *Message, 10)
	go b.Receive(ctx, func(m *Message, _ netip.Addr) { got <- m })
	for i := uint64(1); i <= 5; i++ {
		if err := wrongKey.Send(&Message{Node: "a", BootID: "x", Seq: i}); err != nil {
			t.Fatal(err)
		}
		if err := sameName.Send(&Message{Node: "b", BootID: "y", Seq: i}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && (!strings.Contains(buf.String(), "another pair key") || !strings.Contains(buf.String(), "this node's name")) {
		time.Sleep(20 * time.Millisecond)
	}
	out := buf.String()
	for _, want := range []string{"level=WARN msg=\"ignoring heartbeats signed with another pair key", "level=WARN msg=\"ignoring heartbeats from another node that uses this node's name"} {
		if n := strings.Count(out, want); n != 1 {
			t.Errorf("%d log lines with %q (want exactly 1: logged, and rate-limited):\n%s", n, want, out)
		}
	}
	select {
	case m := <-got:
		t.Fatalf("a mismatched heartbeat reached the state machine: %+v", m)
	case <-time.After(100 * time.Millisecond):
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
