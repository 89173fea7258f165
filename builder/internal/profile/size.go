package profile

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Size is a byte count written in YAML as an integer or with a binary suffix
// (KiB, MiB, GiB, TiB).
type Size int64

// Binary size units.
const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
)

// ParseSize parses "256MiB", "1GiB", "4096".
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	mult := Size(1)
	for _, u := range []struct {
		suf string
		m   Size
	}{{"KiB", KiB}, {"MiB", MiB}, {"GiB", GiB}, {"TiB", TiB}} {
		if strings.HasSuffix(s, u.suf) {
			mult, s = u.m, strings.TrimSuffix(s, u.suf)
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("not a size")
	}
	if n > int64(1<<62)/int64(mult) {
		return 0, fmt.Errorf("too large")
	}
	return Size(n) * mult, nil
}

// String formats the size with the largest exact binary unit.
func (s Size) String() string {
	for _, u := range []struct {
		suf string
		m   Size
	}{{"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB}} {
		if s != 0 && s%u.m == 0 {
			return strconv.FormatInt(int64(s/u.m), 10) + u.suf
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// UnmarshalYAML accepts an integer byte count or a string with a unit.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a size such as 512MiB or 1GiB")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("%q is %v; want a size such as 512MiB or 1GiB", n.Value, err)
	}
	*s = v
	return nil
}

// MarshalJSON writes the size as its string form, so golden files read well.
func (s Size) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.String())), nil }
