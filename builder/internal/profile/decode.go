package profile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

var sizeType = reflect.TypeOf(Size(0))

// decodeStrict decodes b into v. Before yaml.v3's own strict decoding
// (KnownFields) it walks the document against v's type, so errors name the
// YAML path of the field ("disk.rootSlotSize") and say what is expected,
// which yaml.v3's messages ("field x not found in type profile.Disk") do not.
func decodeStrict(name string, b []byte, v any) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%s: not valid YAML: %w", name, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return fmt.Errorf("%s: empty profile; want a mapping with at least name, distribution, suite, mirror, packages, kernel", name)
	}
	if err := check(doc.Content[0], reflect.TypeOf(v).Elem(), ""); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	// A second document is a mistake (an accidental '---').
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: more than one YAML document; want exactly one", name)
	}
	return nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func at(n *yaml.Node, path, format string, args ...any) error {
	if path == "" {
		path = "(top level)"
	}
	return fmt.Errorf("line %d: %s: %s", n.Line, path, fmt.Sprintf(format, args...))
}

func check(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind == yaml.AliasNode {
		return at(n, path, "YAML aliases are not allowed in profiles")
	}
	if t == sizeType {
		if n.Kind != yaml.ScalarNode {
			return at(n, path, "want a size such as 512MiB or 1GiB")
		}
		if _, err := ParseSize(n.Value); err != nil {
			return at(n, path, "%q is %v; want a size such as 512MiB or 1GiB", n.Value, err)
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		if n.Tag == "!!null" {
			return nil
		}
		return check(n, t.Elem(), path)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return at(n, path, "want a mapping with keys %s", strings.Join(keys(t), ", "))
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			k := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if k != "" && k != "-" {
				fields[k] = f.Type
			}
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn, vn := n.Content[i], n.Content[i+1]
			ft, ok := fields[kn.Value]
			if !ok {
				return at(kn, join(path, kn.Value), "unknown field; known fields here are %s", strings.Join(keys(t), ", "))
			}
			if seen[kn.Value] {
				return at(kn, join(path, kn.Value), "set twice")
			}
			seen[kn.Value] = true
			if err := check(vn, ft, join(path, kn.Value)); err != nil {
				return err
			}
		}
		return nil
	case reflect.Slice:
		if n.Tag == "!!null" {
			return nil
		}
		if n.Kind != yaml.SequenceNode {
			return at(n, path, "want a list")
		}
		for i, c := range n.Content {
			if err := check(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
			return at(n, path, "want a string")
		}
		return nil
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return at(n, path, "%q is not a boolean; want true or false", n.Value)
		}
		return nil
	case reflect.Int, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return at(n, path, "%q is not an integer", n.Value)
		}
		return nil
	}
	return at(n, path, "unsupported field type %s", t)
}

func keys(t reflect.Type) []string {
	var ks []string
	for i := 0; i < t.NumField(); i++ {
		k := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if k != "" && k != "-" {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return ks
}
