//go:build integration

package netlab

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func rootLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			names = append(names, f[1])
		}
	}
	return strings.Join(names, " ")
}

// listenIn starts a TCP echo-once server inside ns on addr and returns its address.
func listenIn(t *testing.T, ns, addr string) string {
	t.Helper()
	var ln net.Listener
	if err := Do(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "hello from "+ns)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func reach(ctx context.Context, fromNS, addr string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := Dialer(fromNS)(dctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestLabReachabilityPartitionAndCleanup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("netlab needs root (network namespaces)")
	}
	ctx := context.Background()
	before := rootLinks(t)
	lab, err := New(ctx, netip.MustParsePrefix("198.18.10.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.Close() })
	a, err := lab.AddNamespace(ctx, "a", netip.MustParsePrefix("198.18.10.11/24"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.AddNamespace(ctx, "b", netip.MustParsePrefix("198.18.10.12/24"))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := lab.AddNamespace(ctx, "cl", netip.MustParsePrefix("198.18.10.250/24"))
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.AddTap(ctx, "tap-test0"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "-n", lab.Switch, "-d", "link", "show", lab.Bridge).Output()
	if err != nil || !strings.Contains(string(out), "mcast_snooping 0") {
		t.Fatalf("bridge without multicast snooping off: %s %v", out, err)
	}
	aAddr := listenIn(t, a, "198.18.10.11:7000")
	bAddr := listenIn(t, b, "198.18.10.12:7000")
	clAddr := listenIn(t, cl, "198.18.10.250:7000")

	for _, c := range []struct{ from, to, want string }{{a, bAddr, b}, {b, aAddr, a}, {cl, aAddr, a}, {a, clAddr, cl}} {
		got, err := reach(ctx, c.from, c.to)
		if err != nil || got != "hello from "+c.want {
			t.Fatalf("%s -> %s: %q %v", c.from, c.to, got, err)
		}
	}
	// Nothing of the lab is in the root namespace (no dialing from there: its default
	// route leads off this machine).
	if out, err := exec.Command("ip", "-o", "addr", "show").Output(); err != nil || strings.Contains(string(out), "198.18.") {
		t.Fatalf("root namespace has a lab address: %s %v", out, err)
	}

	// Partition a and b; both still reach the client.
	if err := lab.Isolate(ctx, "v-a", "v-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := reach(ctx, a, bAddr); err == nil {
		t.Fatal("a reached b through the partition")
	}
	for _, from := range []string{a, b} {
		if got, err := reach(ctx, from, clAddr); err != nil || got != "hello from "+cl {
			t.Fatalf("%s -> client during partition: %q %v", from, got, err)
		}
	}
	if err := lab.Heal(ctx, "v-a", "v-b"); err != nil {
		t.Fatal(err)
	}
	if got, err := reach(ctx, a, bAddr); err != nil || got != "hello from "+b {
		t.Fatalf("a -> b after heal: %q %v", got, err)
	}

	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	names, err := Namespaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(names, func(n string) bool { return strings.HasPrefix(n, lab.Prefix()) }); i >= 0 {
		t.Fatalf("namespace %s left after Close", names[i])
	}
	if after := rootLinks(t); after != before {
		t.Fatalf("root namespace links changed:\nbefore %s\nafter  %s", before, after)
	}
}
