//go:build qemu

package qemutests

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/edgepair/edgepair/qemu-tests/netlab"
	"github.com/edgepair/edgepair/qemu-tests/report"
)

// writer inserts numbered rows through the VIP from the client namespace every
// interval, with the same credentials k3s uses (read from the node's k3s config),
// and logs every attempt with the node (cluster_name) that acknowledged it.
type writer struct {
	endpoint string
	ns       string
	interval time.Duration
	log      report.WriteLog
	next     atomic.Int64
	cancel   context.CancelFunc
	done     sync.WaitGroup
}

const writerTable = "edgepair_qemu_writes"

func (w *writer) connect(ctx context.Context) (*pgx.Conn, error) { return w.connectTo(ctx, "") }

// connectTo connects with the endpoint's credentials to host instead of the
// endpoint's host (the VIP) when host is set.
func (w *writer) connectTo(ctx context.Context, host string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(w.endpoint)
	if err != nil {
		return nil, fmt.Errorf("datastore endpoint: %w", err)
	}
	if host != "" {
		cfg.Host, cfg.Fallbacks = host, nil
	}
	cfg.ConnectTimeout = 3 * time.Second
	dial := netlab.Dialer(w.ns)
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) }
	return pgx.ConnectConfig(ctx, cfg)
}

func (w *writer) setup(ctx context.Context) error {
	c, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	for _, tbl := range []string{writerTable, probeTable} {
		if _, err := c.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+tbl+` (id bigint PRIMARY KEY, node text NOT NULL, at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
	}
	return nil
}

func (w *writer) start(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		tick := time.NewTicker(w.interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			id := w.next.Add(1)
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			var err error
			if conn == nil {
				conn, err = w.connect(actx)
			}
			var node string
			if err == nil {
				err = conn.QueryRow(actx, `INSERT INTO `+writerTable+` (id, node) VALUES ($1, current_setting('cluster_name')) RETURNING node`, id).Scan(&node)
			}
			cancel()
			if ctx.Err() != nil && err != nil {
				return // stopping: an interrupted attempt is neither acked nor failed
			}
			wr := report.Write{ID: id, At: time.Now(), OK: err == nil, Node: node}
			if err != nil {
				wr.Err = err.Error()
				if conn != nil {
					conn.Close(context.Background())
					conn = nil
				}
			}
			w.log.Add(wr)
		}
	}()
}

func (w *writer) stop() {
	if w.cancel != nil {
		w.cancel()
	}
	w.done.Wait()
}

// present reads the ids in the table (through the VIP), retrying until ctx ends.
func (w *writer) present(ctx context.Context) ([]int64, error) {
	var last error
	for ctx.Err() == nil {
		ids, err := func() ([]int64, error) {
			c, err := w.connect(ctx)
			if err != nil {
				return nil, err
			}
			defer c.Close(ctx)
			rows, err := c.Query(ctx, `SELECT id FROM `+writerTable)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(rows, pgx.RowTo[int64])
		}()
		if err == nil {
			return ids, nil
		}
		last = err
		time.Sleep(time.Second)
	}
	return nil, fmt.Errorf("reading back the writes: %w (last error: %v)", ctx.Err(), last)
}
