package witness

import "testing"

func TestEchoRequestChecksum(t *testing.T) {
	b := EchoRequest(0x1234, 7, []byte("edgepair"))
	if b[0] != 8 || checksum(b) != 0 {
		t.Fatalf("bad packet %x (checksum over packet must be 0, got %x)", b, checksum(b))
	}
	// turn it into a reply and parse it
	b[0] = 0
	id, seq, ok := parseReply(b)
	if !ok || id != 0x1234 || seq != 7 {
		t.Fatalf("parse: %x %d %v", id, seq, ok)
	}
	if _, _, ok := parseReply([]byte{8, 0, 0, 0, 0, 0, 0, 0}); ok {
		t.Fatal("request parsed as reply")
	}
}
