package seed

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/binary"
	"io"
	"os"
	"strings"
	"testing"
)

func gunzipBase64(s string) ([]byte, error) {
	z, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	r, err := gzip.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

func TestParseAuthorizedKeyValid(t *testing.T) {
	for _, f := range []string{"ed25519.pub", "rsa.pub", "ecdsa.pub"} {
		b, err := os.ReadFile("testdata/" + f)
		if err != nil {
			t.Fatal(err)
		}
		k, err := ParseAuthorizedKey(string(b))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if k.String() != strings.TrimSpace(string(b)) {
			t.Errorf("%s: canonical form %q differs from the file", f, k.String())
		}
	}
}

// sshString encodes one SSH wire-format string.
func sshString(b []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	return append(out, b...)
}

func TestParseAuthorizedKeyInvalid(t *testing.T) {
	ed := func(parts ...[]byte) string {
		var blob []byte
		for _, p := range parts {
			blob = append(blob, sshString(p)...)
		}
		return "ssh-ed25519 " + base64.StdEncoding.EncodeToString(blob)
	}
	key32 := bytes.Repeat([]byte{7}, 32)
	if _, err := ParseAuthorizedKey(ed([]byte("ssh-ed25519"), key32)); err != nil {
		t.Fatalf("hand-made valid key refused: %v", err)
	}
	rsaSmall := "ssh-rsa " + base64.StdEncoding.EncodeToString(append(append(sshString([]byte("ssh-rsa")), sshString([]byte{1, 0, 1})...), sshString(append([]byte{0}, bytes.Repeat([]byte{0xff}, 128)...))...))
	ecBad := "ecdsa-sha2-nistp256 " + base64.StdEncoding.EncodeToString(append(append(sshString([]byte("ecdsa-sha2-nistp256")), sshString([]byte("nistp256"))...), sshString(append([]byte{4}, bytes.Repeat([]byte{1}, 64)...))...))
	for _, tt := range []struct{ line, want string }{
		{"", "empty"},
		{"ssh-dss AAAAB3NzaC1kc3M=", "unknown key type"},
		{"ssh-ed25519", "without its base64 data"},
		{"ssh-ed25519 !!!!", "not valid base64"},
		{ed([]byte("ssh-rsa"), key32), `key data says "ssh-rsa"`},
		{ed([]byte("ssh-ed25519"), key32[:31]), "31 bytes, expected 32"},
		{ed([]byte("ssh-ed25519"), key32, []byte("x")), "unexpected bytes"},
		{"ssh-ed25519 " + base64.StdEncoding.EncodeToString([]byte{0, 0, 0, 200, 1}), "truncated"},
		{rsaSmall, "1024 bits, expected at least 2048"},
		{ecBad, "not on curve"},
		{"-----BEGIN OPENSSH PRIVATE KEY-----", "private key"},
		{"ssh-ed25519 AAAA\nssh-ed25519 AAAA", "several lines"},
	} {
		_, err := ParseAuthorizedKey(tt.line)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want an error containing %q", tt.line, err, tt.want)
		}
	}
}

func FuzzParseAuthorizedKey(f *testing.F) {
	for _, n := range []string{"ed25519.pub", "rsa.pub", "ecdsa.pub"} {
		b, err := os.ReadFile("testdata/" + n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, line string) {
		k, err := ParseAuthorizedKey(line)
		if err != nil {
			return
		}
		// The canonical form parses to the same key.
		k2, err := ParseAuthorizedKey(k.String())
		if err != nil || k2.String() != k.String() {
			t.Fatalf("canonical form %q does not round-trip: %v", k.String(), err)
		}
	})
}
