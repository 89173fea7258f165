package render

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from golden file:\n--- got ---\n%s\n--- want ---\n%s", name, got, want)
	}
}

func TestKeepalivedGolden(t *testing.T) {
	b, err := KeepalivedConf(Keepalived{
		RouterID: "edgepair-node-a", Interface: "eth0", VRID: 51,
		SrcIP: netip.MustParseAddr("198.18.0.11"), PeerIP: netip.MustParseAddr("198.18.0.12"),
		VIP: netip.MustParsePrefix("198.18.0.10/24"), TrackFile: "/run/edgepair/vip-track",
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "keepalived.conf", b)
}

func TestKeepalivedRejectsMissing(t *testing.T) {
	if _, err := KeepalivedConf(Keepalived{Interface: "eth0"}); err == nil {
		t.Fatal("want error for missing addresses")
	}
	if _, err := KeepalivedConf(Keepalived{AdvertInt: "fast"}); err == nil {
		t.Fatal("want error for bad advert_int")
	}
}

func TestK3sGolden(t *testing.T) {
	b, err := K3sConfig(K3s{
		DatastoreEndpoint: "postgres://k3s:secret@198.18.0.10:5432/kubernetes?sslmode=disable",
		Token:             "K10token", TLSSANs: []string{"198.18.0.10"}, NodeIP: "198.18.0.11", NodeName: "node-a",
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "k3s-config.yaml", b)
}

func TestPostgresGolden(t *testing.T) {
	b, err := PostgresConf(Postgres{
		ClusterName: "node-b", Port: 5432, SocketDir: "/run/postgresql",
		HBAFile: "/var/lib/postgresql/15/edgepair/pg_hba.conf", IdentFile: "/var/lib/postgresql/15/edgepair/pg_ident.conf",
		PrimaryConninfo: "host=198.18.0.11 port=5432 user=replicator password=it's application_name=node-b",
		PrimarySlot:     "edgepair_node_b",
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "postgresql-standby.conf", b)
	if _, err := PostgresConf(Postgres{ClusterName: "a'b", Port: 1, SocketDir: "/s", HBAFile: "h", IdentFile: "i"}); err == nil {
		t.Fatal("want error for a quote in cluster name")
	}
}

func TestHBAGolden(t *testing.T) {
	b, err := HBAConf(HBA{
		PeerAddrs:       []netip.Addr{netip.MustParseAddr("198.18.0.12"), netip.MustParseAddr("198.19.0.2")},
		ReplicationUser: "replicator", K3sUser: "k3s", K3sDB: "kubernetes",
		K3sNets:  []netip.Prefix{netip.MustParsePrefix("198.18.0.11/24"), netip.MustParsePrefix("198.18.0.10/32")},
		IdentMap: "edgepair",
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "pg_hba.conf", b)
	golden(t, "pg_ident.conf", IdentConf("edgepair"))
}
