package pg

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestParseLSN(t *testing.T) {
	for in, want := range map[string]uint64{"0/0": 0, "0/3000148": 0x3000148, "1/0": 1 << 32, "A/FF": 0xa<<32 | 0xff} {
		got, err := ParseLSN(in)
		if err != nil || got != want {
			t.Errorf("%s: got %x %v want %x", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "x/1", "1/zz", "100000000/0"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseLSN(f *testing.F) {
	f.Add("0/3000148")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseLSN(s)
		if err != nil {
			return
		}
		back, err := ParseLSN(formatLSN(v))
		if err != nil || back != v {
			t.Fatalf("%q -> %x -> %q -> %x %v", s, v, formatLSN(v), back, err)
		}
	})
}

func TestQuoting(t *testing.T) {
	if got := quoteLiteral(`it's`); got != `'it''s'` {
		t.Fatal(got)
	}
	if got := conninfoQuote(`a'b\c`); got != `'a\'b\\c'` {
		t.Fatal(got)
	}
	if got := quoteLiteral(quoteIdent("node-a")); got != `'"node-a"'` {
		t.Fatal(got)
	}
}

func formatLSN(v uint64) string {
	return fmtHex(v>>32) + "/" + fmtHex(v&0xffffffff)
}

func fmtHex(v uint64) string { return strconv.FormatUint(v, 16) }

func TestNotConnected(t *testing.T) {
	for _, c := range []struct {
		msg  string
		want bool
	}{
		{`pg_rewind: exit status 1: pg_rewind: error: connection to server at "198.18.10.12", port 5432 failed: timeout expired`, true},
		{`pg_rewind: exit status 1: pg_rewind: error: connection to server at "198.18.10.12", port 5432 failed: Connection refused`, true},
		{`pg_rewind: exit status 1: could not connect to server: No route to host`, true},
		{`pg_rewind: exit status 1: pg_rewind: error: could not find common ancestor of the source and target cluster's timelines`, false},
		{`write /var/lib/postgresql/15/edgepair/pg_hba.conf: no such file or directory`, false},
	} {
		if got := notConnected(errors.New(c.msg)); got != c.want {
			t.Errorf("notConnected(%q) = %v, want %v", c.msg, got, c.want)
		}
	}
}

// permitService records whether the start permit existed when it was asked
// to start, and fails the start (no server here).
type permitService struct {
	permit  string
	existed bool
}

func (s *permitService) Start(context.Context) error {
	_, err := os.Stat(s.permit)
	s.existed = err == nil
	return errors.New("no server in this test")
}
func (s *permitService) Stop(context.Context) error { return nil }
func (s *permitService) Kill(context.Context) error { return nil }

// The start permit exists only while the agent starts the server, also when
// the start fails, and a stale one is cleared.
func TestStartPermit(t *testing.T) {
	d := t.TempDir()
	permit := filepath.Join(d, "postgres.start-permit")
	svc := &permitService{permit: permit}
	l := New(Config{PGData: filepath.Join(d, "pgdata"), StartPermit: permit}, svc, slog.New(slog.DiscardHandler))
	if err := l.start(context.Background()); err == nil {
		t.Fatal("start succeeded with a failing service")
	}
	if !svc.existed {
		t.Error("the permit did not exist while the service was started")
	}
	if _, err := os.Stat(permit); !os.IsNotExist(err) {
		t.Errorf("permit left after the start: %v", err)
	}
	if err := os.WriteFile(permit, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l.ClearStartPermit()
	if _, err := os.Stat(permit); !os.IsNotExist(err) {
		t.Errorf("stale permit not cleared: %v", err)
	}
}
