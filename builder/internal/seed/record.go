package seed

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/edgepair/edgepair/agent/pairconfig"
	"github.com/edgepair/edgepair/agent/pairconfig/strictyaml"
	"gopkg.in/yaml.v3"
)

// RecordVersion is the pair record schema version.
const RecordVersion = 1

// RecordFile is the pair record's file name in the output directory.
const RecordFile = "pair.record.yaml"

// Record is everything the seeds of one pair are made from: the normalised
// pair file, the generated secrets and the creation time used for every
// timestamp inside the images. Rendering a Record is deterministic, so
// `builder seed --from-record` rebuilds the same seeds byte for byte.
// It holds the secrets: keep it 0600 and out of version control.
type Record struct {
	RecordVersion int                `yaml:"recordVersion"`
	Created       time.Time          `yaml:"created"`
	Spec          Spec               `yaml:"spec"`
	Secrets       pairconfig.Secrets `yaml:"secrets"`
}

// GenerateSecrets draws new pair secrets from r (crypto/rand.Reader in
// production): 24 random bytes for the replication password and the k3s
// token (URL-safe base64, no padding: nothing to quote in conninfo or
// YAML), 32 for the pair key (standard base64, as pairconfig expects).
func GenerateSecrets(r io.Reader) (pairconfig.Secrets, error) {
	read := func(n int) ([]byte, error) {
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, fmt.Errorf("generating secrets: %w", err)
		}
		return b, nil
	}
	pw, err := read(24)
	if err != nil {
		return pairconfig.Secrets{}, err
	}
	tok, err := read(24)
	if err != nil {
		return pairconfig.Secrets{}, err
	}
	key, err := read(pairconfig.PairKeyLen)
	if err != nil {
		return pairconfig.Secrets{}, err
	}
	return pairconfig.Secrets{
		ReplicationPassword: base64.RawURLEncoding.EncodeToString(pw),
		K3sToken:            base64.RawURLEncoding.EncodeToString(tok),
		PairKey:             base64.StdEncoding.EncodeToString(key),
	}, nil
}

// NewRecord makes the record of a new pair: it normalises spec, draws
// fresh secrets from crypto/rand and takes created (truncated to seconds,
// UTC) as the pair's timestamp. It checks both nodes' configurations.
func NewRecord(spec Spec, created time.Time) (*Record, error) {
	sec, err := GenerateSecrets(rand.Reader)
	if err != nil {
		return nil, err
	}
	return newRecord(spec, created, sec)
}

func newRecord(spec Spec, created time.Time, sec pairconfig.Secrets) (*Record, error) {
	if err := spec.Normalize(); err != nil {
		return nil, err
	}
	r := &Record{RecordVersion: RecordVersion, Created: created.UTC().Truncate(time.Second), Spec: spec, Secrets: sec}
	if err := r.Check(); err != nil {
		return nil, err
	}
	return r, nil
}

// Check validates the record: both nodes' pair configurations must pass
// pairconfig.Validate.
func (r *Record) Check() error {
	if r.RecordVersion != RecordVersion {
		return fieldErr("recordVersion", "unsupported version %d, expected %d", r.RecordVersion, RecordVersion)
	}
	if r.Created.IsZero() || r.Created.Year() < 1980 {
		// FAT timestamps start in 1980.
		return fieldErr("created", "%v is not a usable creation time, expected 1980 or later", r.Created)
	}
	for _, n := range r.Spec.Nodes {
		if _, err := r.Spec.PairConfig(n.Name, r.Secrets); err != nil {
			return err
		}
	}
	return nil
}

// Marshal writes the record as YAML (deterministic).
func (r *Record) Marshal() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("# edgepair pair record: the input and the generated secrets of one pair.\n" +
		"# Keep it secret (mode 0600). `builder seed --from-record` rebuilds the\n" +
		"# same seeds from it byte for byte; a new `builder seed` makes a new pair.\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("pair record: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("pair record: %w", err)
	}
	return b.Bytes(), nil
}

// ParseRecord reads a pair record strictly and checks it.
func ParseRecord(data []byte, name string) (*Record, error) {
	var r Record
	pos, err := strictyaml.Decode(data, name, &r)
	if err != nil {
		return nil, err
	}
	if err := r.Spec.Normalize(); err != nil {
		return nil, pos.Locate(prefixPaths(err, "spec."), name)
	}
	r.Created = r.Created.UTC()
	if err := r.Check(); err != nil {
		return nil, pos.Locate(prefixPaths(err, ""), name)
	}
	return &r, nil
}

// prefixPaths prepends p to the paths of field errors; with p == "" it
// puts pair-file paths under spec. and leaves secrets., recordVersion and
// created as they are.
func prefixPaths(err error, p string) error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, prefixPaths(e, p))
		}
		return errors.Join(out...)
	}
	fe, ok := err.(*strictyaml.FieldError)
	if !ok {
		return err
	}
	c := *fe
	switch {
	case p != "":
		c.Path = p + c.Path
	case strings.HasPrefix(c.Path, "secrets.") || c.Path == "recordVersion" || c.Path == "created":
	default:
		c.Path = "spec." + c.Path
	}
	return &c
}
