package nstest

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Ack is one write PostgreSQL acknowledged.
type Ack struct {
	Seq  int64
	Node string // cluster_name of the server that committed it
	Via  string // "vip" or the node address written to directly
	At   time.Time
}

// Writer inserts sequence numbers from the client namespace: one writer
// through the VIP (what k3s does) and one prober per node writing to the
// node's own address, to catch a node that accepts writes when it must not.
type Writer struct {
	p      *Pair
	seq    atomic.Int64
	mu     sync.Mutex
	acks   []Ack
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

const tableSQL = `CREATE TABLE IF NOT EXISTS writes (seq bigint PRIMARY KEY, node text NOT NULL, via text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`

func (p *Pair) connect(ctx context.Context, host netip.Addr) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(p.DSN(host))
	if err != nil {
		return nil, err
	}
	cfg.DialFunc = Dialer(p.Net.Client)
	return pgx.ConnectConfig(ctx, cfg)
}

// StartWriter creates the table through the VIP and starts writing.
func (p *Pair) StartWriter() *Writer {
	p.T.Helper()
	ctx, cancel := Ctx(10 * time.Second)
	defer cancel()
	c, err := p.connect(ctx, p.Net.VIP().Addr())
	if err != nil {
		p.T.Fatalf("connect through the VIP: %v", err)
	}
	if _, err := c.Exec(ctx, tableSQL); err != nil {
		p.T.Fatalf("create table: %v", err)
	}
	c.Close(ctx)
	wctx, wcancel := context.WithCancel(context.Background())
	w := &Writer{p: p, cancel: wcancel}
	w.wg.Add(3)
	go w.loop(wctx, p.Net.VIP().Addr(), "vip", 10*time.Millisecond)
	for i := range 2 {
		go w.loop(wctx, p.Net.LAN(i).Addr(), p.Names[i], 100*time.Millisecond)
	}
	return w
}

func (w *Writer) loop(ctx context.Context, host netip.Addr, via string, pause time.Duration) {
	defer w.wg.Done()
	var c *pgx.Conn
	defer func() {
		if c != nil {
			c.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if c == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			var err error
			c, err = w.p.connect(cctx, host)
			cancel()
			if err != nil {
				c = nil
				sleep(ctx, 50*time.Millisecond)
				continue
			}
		}
		seq := w.seq.Add(1)
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		var node string
		err := c.QueryRow(qctx, `INSERT INTO writes (seq, node, via) VALUES ($1, current_setting('cluster_name'), $2) RETURNING node`, seq, via).Scan(&node)
		cancel()
		if err != nil {
			c.Close(context.Background())
			c = nil
			sleep(ctx, 20*time.Millisecond)
			continue
		}
		w.mu.Lock()
		w.acks = append(w.acks, Ack{Seq: seq, Node: node, Via: via, At: time.Now()})
		w.mu.Unlock()
		sleep(ctx, pause)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Stop ends the writers.
func (w *Writer) Stop() {
	w.cancel()
	w.wg.Wait()
}

// Acks returns the acknowledged writes in acknowledgement order.
func (w *Writer) Acks() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := append([]Ack(nil), w.acks...)
	sort.Slice(a, func(i, j int) bool { return a[i].At.Before(a[j].At) })
	return a
}

// FirstAfter is the first write acknowledged by node after t.
func (w *Writer) FirstAfter(t time.Time, node string) (Ack, bool) {
	for _, a := range w.Acks() {
		if a.At.After(t) && (node == "" || a.Node == node) {
			return a, true
		}
	}
	return Ack{}, false
}

// LastBefore is the last write acknowledged before t.
func (w *Writer) LastBefore(t time.Time) (Ack, bool) {
	var last Ack
	ok := false
	for _, a := range w.Acks() {
		if a.At.Before(t) {
			last, ok = a, true
		}
	}
	return last, ok
}

// WaitAck waits until node acknowledges a write after t.
func (w *Writer) WaitAck(t time.Time, node string, timeout time.Duration) (Ack, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if a, ok := w.FirstAfter(t, node); ok {
			return a, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return Ack{}, fmt.Errorf("no write acknowledged by %s within %s", node, timeout)
}

// Verify checks, on the final primary (node index final), that every
// acknowledged write is present and was committed by the node that
// acknowledged it, and that the nodes that acknowledged writes changed at
// most maxSwitches times (two nodes never accepted writes at the same time).
func (w *Writer) Verify(final int, maxSwitches int) {
	t := w.p.T
	t.Helper()
	acks := w.Acks()
	if len(acks) == 0 {
		t.Fatal("no write was acknowledged at all")
	}
	ctx, cancel := Ctx(20 * time.Second)
	defer cancel()
	c, err := w.p.connect(ctx, w.p.Net.LAN(final).Addr())
	if err != nil {
		t.Fatalf("connect to the final primary: %v", err)
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, `SELECT seq, node FROM writes`)
	if err != nil {
		t.Fatalf("read writes: %v", err)
	}
	have := map[int64]string{}
	for rows.Next() {
		var s int64
		var n string
		if err := rows.Scan(&s, &n); err != nil {
			t.Fatal(err)
		}
		have[s] = n
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	lost := 0
	for _, a := range acks {
		n, ok := have[a.Seq]
		if !ok || n != a.Node {
			lost++
			if lost <= 10 {
				t.Errorf("acknowledged write %d (by %s via %s at %s) missing on the final primary (found %q)", a.Seq, a.Node, a.Via, a.At.Format("15:04:05.000"), n)
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged writes lost", lost, len(acks))
	}
	switches := 0
	for i := 1; i < len(acks); i++ {
		if acks[i].Node != acks[i-1].Node {
			switches++
			t.Logf("writer switched from %s (last ack %s) to %s (first ack %s)", acks[i-1].Node, acks[i-1].At.Format("15:04:05.000"),
				acks[i].Node, acks[i].At.Format("15:04:05.000"))
		}
	}
	if switches > maxSwitches {
		t.Fatalf("acknowledging node changed %d times, want at most %d: two nodes accepted writes in overlapping periods", switches, maxSwitches)
	}
	t.Logf("verified %d acknowledged writes on %s (%d rows), %d switch(es)", len(acks), w.p.Names[final], len(have), switches)
}
