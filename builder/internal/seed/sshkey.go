package seed

import (
	"bytes"
	"crypto/ecdh"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// MinRSABits is the smallest RSA modulus accepted for an authorized key.
const MinRSABits = 2048

// AuthorizedKey is one parsed OpenSSH public key line.
type AuthorizedKey struct {
	Type    string // e.g. ssh-ed25519
	Blob    []byte // the decoded wire-format key
	Comment string
}

// String is the canonical authorized_keys line: type, base64, comment.
func (k AuthorizedKey) String() string {
	s := k.Type + " " + base64.StdEncoding.EncodeToString(k.Blob)
	if k.Comment != "" {
		s += " " + k.Comment
	}
	return s
}

// ParseAuthorizedKey parses one OpenSSH public key line ("type base64
// [comment]") and checks the key material itself: the type inside the
// blob matches the line, lengths are right, ECDSA points lie on their
// curve, RSA moduli have at least MinRSABits bits. authorized_keys
// options (from=..., command=...) are refused: cloud-init would pass them
// through, but a seed should carry plain keys.
func ParseAuthorizedKey(line string) (AuthorizedKey, error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return AuthorizedKey{}, errors.New("empty, expected an OpenSSH public key such as \"ssh-ed25519 AAAA... user@host\"")
	}
	if strings.ContainsAny(line, "\r\n") {
		return AuthorizedKey{}, errors.New("spans several lines, expected one key per entry")
	}
	fields := strings.Fields(line)
	typ := fields[0]
	if _, ok := keyTypes[typ]; !ok {
		if strings.HasPrefix(typ, "-----BEGIN") || strings.Contains(line, "PRIVATE KEY") {
			return AuthorizedKey{}, errors.New("this is a private key; give the public key (the .pub file)")
		}
		return AuthorizedKey{}, fmt.Errorf("unknown key type %q, expected one of %s", trunc(typ, 40), strings.Join(keyTypeNames(), ", "))
	}
	if len(fields) < 2 {
		return AuthorizedKey{}, fmt.Errorf("%s key without its base64 data", typ)
	}
	blob, err := base64.StdEncoding.DecodeString(fields[1])
	if err != nil {
		return AuthorizedKey{}, fmt.Errorf("key data is not valid base64: %v", err)
	}
	if err := keyTypes[typ](typ, blob); err != nil {
		return AuthorizedKey{}, fmt.Errorf("malformed %s key: %w", typ, err)
	}
	return AuthorizedKey{Type: typ, Blob: blob, Comment: strings.Join(fields[2:], " ")}, nil
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// keyTypes maps each accepted key type to the check of its wire format.
var keyTypes = map[string]func(typ string, blob []byte) error{
	"ssh-ed25519":                ed25519Check(false),
	"sk-ssh-ed25519@openssh.com": ed25519Check(true),
	"ssh-rsa": func(typ string, b []byte) error {
		r := wire{b}
		if err := r.expectType(typ); err != nil {
			return err
		}
		e, err := r.mpint()
		if err != nil {
			return err
		}
		n, err := r.mpint()
		if err != nil {
			return err
		}
		if e.Sign() <= 0 || e.Bit(0) == 0 || e.BitLen() > 32 {
			return fmt.Errorf("RSA public exponent %v is not a small odd number", e)
		}
		if n.BitLen() < MinRSABits {
			return fmt.Errorf("RSA modulus has %d bits, expected at least %d", n.BitLen(), MinRSABits)
		}
		if n.Bit(0) == 0 {
			return errors.New("RSA modulus is even")
		}
		return r.end()
	},
	"ecdsa-sha2-nistp256": ecdsaCheck("nistp256", ecdh.P256()),
	"ecdsa-sha2-nistp384": ecdsaCheck("nistp384", ecdh.P384()),
	"ecdsa-sha2-nistp521": ecdsaCheck("nistp521", ecdh.P521()),
	"sk-ecdsa-sha2-nistp256@openssh.com": func(typ string, b []byte) error {
		r := wire{b}
		if err := r.expectType(typ); err != nil {
			return err
		}
		if err := ecdsaPoint(&r, "nistp256", ecdh.P256()); err != nil {
			return err
		}
		if _, err := r.str(); err != nil {
			return err
		}
		return r.end()
	},
}

func keyTypeNames() []string {
	return []string{"ssh-ed25519", "ecdsa-sha2-nistp256/384/521", "ssh-rsa (>= 2048 bits)", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"}
}

func ecdsaCheck(curve string, c ecdh.Curve) func(string, []byte) error {
	return func(typ string, b []byte) error {
		r := wire{b}
		if err := r.expectType(typ); err != nil {
			return err
		}
		if err := ecdsaPoint(&r, curve, c); err != nil {
			return err
		}
		return r.end()
	}
}

func ecdsaPoint(r *wire, curve string, c ecdh.Curve) error {
	name, err := r.str()
	if err != nil {
		return err
	}
	if string(name) != curve {
		return fmt.Errorf("curve %q inside the key, expected %q", trunc(string(name), 20), curve)
	}
	pt, err := r.str()
	if err != nil {
		return err
	}
	// crypto/ecdh checks that an uncompressed point lies on the curve.
	if _, err := c.NewPublicKey(pt); err != nil {
		return fmt.Errorf("point is not on curve %s", curve)
	}
	return nil
}

// wire reads the SSH wire format (RFC 4251 section 5).
type wire struct{ b []byte }

var errShort = errors.New("key data is truncated")

func (w *wire) str() ([]byte, error) {
	if len(w.b) < 4 {
		return nil, errShort
	}
	n := binary.BigEndian.Uint32(w.b)
	if uint64(n) > uint64(len(w.b)-4) {
		return nil, errShort
	}
	s := w.b[4 : 4+n]
	w.b = w.b[4+n:]
	return s, nil
}

func (w *wire) mpint() (*big.Int, error) {
	s, err := w.str()
	if err != nil {
		return nil, err
	}
	if len(s) > 0 && s[0]&0x80 != 0 {
		return nil, errors.New("negative integer in key data")
	}
	return new(big.Int).SetBytes(s), nil
}

func (w *wire) expectType(typ string) error {
	s, err := w.str()
	if err != nil {
		return err
	}
	if !bytes.Equal(s, []byte(typ)) {
		return fmt.Errorf("key data says %q, the line says %q", trunc(string(s), 40), typ)
	}
	return nil
}

func (w *wire) end() error {
	if len(w.b) != 0 {
		return fmt.Errorf("%d unexpected bytes after the key", len(w.b))
	}
	return nil
}

// ed25519Check checks an ed25519 key blob: the type, a 32-byte point and,
// for a security-key (sk-) key, the application string that follows it.
func ed25519Check(sk bool) func(typ string, blob []byte) error {
	return func(typ string, b []byte) error {
		r := wire{b}
		if err := r.expectType(typ); err != nil {
			return err
		}
		k, err := r.str()
		if err != nil {
			return err
		}
		if len(k) != 32 {
			return fmt.Errorf("ed25519 key is %d bytes, expected 32", len(k))
		}
		if sk {
			if _, err := r.str(); err != nil { // application, e.g. "ssh:"
				return err
			}
		}
		return r.end()
	}
}
