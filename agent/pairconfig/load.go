package pairconfig

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/edgepair/edgepair/agent/pairconfig/strictyaml"
	"gopkg.in/yaml.v3"
)

// Default timeouts. They follow research/ha.md section 4(b): heartbeats
// every 200 ms (5 per second, well under the 500 ms ceiling), the peer
// presumed gone after 1 s (5 missed heartbeats), a primary lease of 2 s
// after which an isolated primary fences itself, promotion at 3 s (one
// second of margin over the fence for scheduling and the heartbeat in
// flight), leaving ~1-2 s for promotion and the VIP's gratuitous ARP within
// the 5 s failover goal. The primary falls back to asynchronous replication
// only at 6 s, well after the standby's promotion window (so a standby that
// promoted never misses an acknowledged commit) yet under k3s's ~10 s
// datastore-latency limit.
const (
	DefaultHeartbeat    = 200 * time.Millisecond
	DefaultPeerDead     = 1 * time.Second
	DefaultFenceAfter   = 2 * time.Second
	DefaultPromoteAfter = 3 * time.Second
	DefaultDegradeAfter = 6 * time.Second

	DefaultPostgresPort  = 5432
	DefaultHeartbeatPort = 7946
	DefaultStatusPort    = 7947
)

// Limits enforced by Validate.
const (
	// MaxHeartbeat is the slowest heartbeat interval allowed.
	MaxHeartbeat = 500 * time.Millisecond
	// MinMargin is the least gap between fenceAfter and promoteAfter, and
	// between the end of the standby's promotion window (promoteAfter +
	// peerDead, see agent/README.md) and degradeAfter; at least 2 heartbeats.
	// The agent checks the same rule (agent/internal/pair), so a seed that
	// passes here is never refused at start.
	MinMargin = time.Second
	// MaxDegradeAfter keeps blocked synchronous commits under k3s's ~10 s
	// datastore-latency limit (research/ha.md, k3s #3127).
	MaxDegradeAfter = 10 * time.Second
	// PairKeyLen is the length of the decoded pair key.
	PairKeyLen = 32
)

// Load reads, defaults and validates the pair configuration at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pair configuration: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes data strictly (unknown fields, wrong types and extra
// documents are errors), applies defaults and validates the result. name
// (usually the file name) prefixes every error, together with the line and
// the field path. The errors are *strictyaml.FieldError values, joined.
func Parse(data []byte, name string) (*Config, error) {
	var c Config
	pos, err := strictyaml.Decode(data, name, &c)
	if err != nil {
		return nil, err
	}
	if c.Version == 0 {
		return nil, &strictyaml.FieldError{File: name, Path: "version", Msg: fmt.Sprintf("missing, expected %d", Version)}
	}
	if c.Version != Version {
		p := pos["version"]
		return nil, &strictyaml.FieldError{File: name, Line: p.Line, Column: p.Column, Path: "version",
			Msg: fmt.Sprintf("unsupported version %d, this agent reads version %d", c.Version, Version)}
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, pos.Locate(err, name)
	}
	return &c, nil
}

// ApplyDefaults fills the fields that have defaults and are unset: the
// timeouts, the ports and the witness address (the gateway). Secrets and
// identities never get defaults.
func (c *Config) ApplyDefaults() {
	if c.Version == 0 {
		c.Version = Version
	}
	t := &c.Timeouts
	for _, f := range []struct {
		d   *Duration
		def time.Duration
	}{
		{&t.Heartbeat, DefaultHeartbeat},
		{&t.PeerDead, DefaultPeerDead},
		{&t.FenceAfter, DefaultFenceAfter},
		{&t.PromoteAfter, DefaultPromoteAfter},
		{&t.DegradeAfter, DefaultDegradeAfter},
	} {
		if f.d.Duration == 0 {
			f.d.Duration = f.def
		}
	}
	for _, f := range []struct {
		p   *int
		def int
	}{
		{&c.Ports.Postgres, DefaultPostgresPort},
		{&c.Ports.Heartbeat, DefaultHeartbeatPort},
		{&c.Ports.Status, DefaultStatusPort},
	} {
		if *f.p == 0 {
			*f.p = f.def
		}
	}
	if !c.Witness.Address.IsValid() {
		c.Witness.Address = c.Witness.Gateway
	}
}

// Marshal writes c as YAML, deterministically: the same Config always
// gives the same bytes (field order is the struct's, 2-space indent).
func (c *Config) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("pair configuration: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("pair configuration: %w", err)
	}
	return b.Bytes(), nil
}

// SelfIndex is the index in Nodes of the node this file is for, or -1.
func (c *Config) SelfIndex() int {
	for i := range c.Nodes {
		if c.Nodes[i].Name == c.Self {
			return i
		}
	}
	return -1
}

// SelfNode is the node this file is for. On a validated Config it always
// exists; otherwise the zero Node is returned.
func (c *Config) SelfNode() Node {
	if i := c.SelfIndex(); i >= 0 {
		return c.Nodes[i]
	}
	return Node{}
}

// PeerNode is the other node of the pair. On a validated Config it always
// exists; otherwise the zero Node is returned.
func (c *Config) PeerNode() Node {
	if i := c.SelfIndex(); i >= 0 {
		return c.Nodes[1-i]
	}
	return Node{}
}

// IsInitialPrimary tells whether this node runs initdb on first boot.
func (c *Config) IsInitialPrimary() bool { return c.Self != "" && c.Self == c.InitialPrimary }

// PairKeyBytes decodes the pair key (standard base64 of 32 bytes).
func (c *Config) PairKeyBytes() ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(c.Secrets.PairKey)
	if err != nil {
		return nil, fmt.Errorf("secrets.pairKey: not standard base64: %w", err)
	}
	if len(k) != PairKeyLen {
		return nil, fmt.Errorf("secrets.pairKey: decodes to %d bytes, expected %d", len(k), PairKeyLen)
	}
	return k, nil
}

// Fingerprint identifies the pair a configuration belongs to: the hex
// SHA-256 of the marshalled configuration with `self` cleared, so both
// nodes of one pair get the same value and any difference in names,
// addresses, VIP, secrets, timeouts or ports gives another. Agents put it
// in their heartbeats and refuse to pair with a peer whose fingerprint
// differs (mismatched seeds). Defaults are applied to a copy first, so an
// explicit default and an omitted one give the same fingerprint.
func (c *Config) Fingerprint() string {
	cc := *c
	if cc.Nodes[0].Link != nil { // copy pointers so nothing aliases c
		l := *cc.Nodes[0].Link
		cc.Nodes[0].Link = &l
	}
	if cc.Nodes[1].Link != nil {
		l := *cc.Nodes[1].Link
		cc.Nodes[1].Link = &l
	}
	cc.Self = ""
	cc.ApplyDefaults()
	b, err := cc.Marshal()
	if err != nil {
		// Marshal of this fixed struct cannot fail; keep the value
		// distinct from any real fingerprint all the same.
		return "invalid:" + err.Error()
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ShortFingerprint is the first 12 hex digits of Fingerprint, for logs.
func (c *Config) ShortFingerprint() string { return c.Fingerprint()[:12] }

// ErrMismatch is returned by CheckPeer when the peer's configuration
// belongs to another pair.
var ErrMismatch = errors.New("peer has a different pair configuration")

// CheckPeer compares the fingerprint and node name a peer announced with
// this configuration: it returns an error wrapping ErrMismatch when the
// peer is not this pair's other node (different seed, or the same node
// name as self). The agent logs it and does not pair; it destroys nothing.
func (c *Config) CheckPeer(peerName, peerFingerprint string) error {
	if peerName == c.Self {
		return fmt.Errorf("%w: peer calls itself %q, the same name as this node (both seeds are for one node)", ErrMismatch, peerName)
	}
	if want := c.PeerNode().Name; peerName != want {
		return fmt.Errorf("%w: peer calls itself %q, expected %q", ErrMismatch, peerName, want)
	}
	if got, want := peerFingerprint, c.Fingerprint(); got != want {
		short := func(s string) string {
			if len(s) > 12 {
				return s[:12]
			}
			return s
		}
		return fmt.Errorf("%w: peer fingerprint %s, ours %s (seeds from different pairs or different `builder seed` runs)", ErrMismatch, short(got), short(want))
	}
	return nil
}
