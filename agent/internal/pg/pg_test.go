package pg

import (
	"errors"
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
