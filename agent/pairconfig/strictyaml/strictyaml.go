// Package strictyaml decodes one YAML document into a Go struct strictly:
// unknown keys, duplicate keys, wrong types and extra documents are errors
// that name the file, the line, the field path and what was expected.
//
// yaml.v3's KnownFields reports "line N: field x not found in type T" and
// loses the line for errors returned by TextUnmarshalers (netip.Prefix,
// durations). Walking the yaml.Node tree ourselves keeps both, and records
// where each field path was written so later validation errors can point
// at the line too.
package strictyaml

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxErrors bounds how many field errors one Decode reports.
const maxErrors = 20

// FieldError is a problem with one field of a YAML file.
type FieldError struct {
	File   string // file name as given to Decode; may be empty
	Line   int    // 1-based; 0 when unknown
	Column int    // 1-based; 0 when unknown
	Path   string // field path, e.g. nodes[1].address; empty for the document
	Msg    string // what is wrong and what would be right
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(":")
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:%d:", e.Line, e.Column)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Positions maps a field path (as in FieldError.Path) to where its value
// was written.
type Positions map[string]Pos

// Pos is a line and column in the source file.
type Pos struct{ Line, Column int }

// Locate fills File, Line and Column of every *FieldError in err (as joined
// by errors.Join) whose Path, or the nearest parent path, has a position.
func (p Positions) Locate(err error, file string) error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, p.Locate(e, file))
		}
		return errors.Join(out...)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		return err
	}
	c := *fe
	c.File = file
	if c.Line == 0 {
		for path := c.Path; ; path = parentPath(path) {
			if pos, ok := p[path]; ok {
				c.Line, c.Column = pos.Line, pos.Column
				break
			}
			if path == "" {
				break
			}
		}
	}
	return &c
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// Decode reads exactly one YAML document from data into out (a pointer to a
// struct) and returns the positions of all decoded fields. Every error is a
// *FieldError or an errors.Join of them.
func Decode(data []byte, file string, out any) (Positions, error) {
	rv := reflect.ValueOf(out)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return nil, fmt.Errorf("strictyaml: Decode needs a non-nil pointer, got %T", out)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &FieldError{File: file, Msg: "file is empty, expected a YAML mapping"}
		}
		return nil, &FieldError{File: file, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &FieldError{File: file, Line: extra.Line, Column: extra.Column, Msg: "more than one YAML document, expected exactly one"}
	} else if !errors.Is(err, io.EOF) {
		return nil, &FieldError{File: file, Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	d := &decoder{file: file, pos: Positions{}}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) != 1 {
			return nil, &FieldError{File: file, Msg: "file is empty, expected a YAML mapping"}
		}
		root = root.Content[0]
	}
	d.value(root, rv.Elem(), "")
	if len(d.errs) > 0 {
		return d.pos, errors.Join(d.errs...)
	}
	return d.pos, nil
}

type decoder struct {
	file  string
	pos   Positions
	errs  []error
	depth int
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	if len(d.errs) == maxErrors {
		d.errs = append(d.errs, &FieldError{File: d.file, Msg: "too many errors, stopping"})
	}
	if len(d.errs) > maxErrors {
		return
	}
	d.errs = append(d.errs, &FieldError{File: d.file, Line: n.Line, Column: n.Column, Path: path, Msg: fmt.Sprintf(format, args...)})
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// describe says what a node holds, for "got ..." in messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		switch n.ShortTag() {
		case "!!str":
			return fmt.Sprintf("the string %q", v)
		case "!!null":
			return "null"
		default:
			return fmt.Sprintf("%s %s", strings.TrimPrefix(n.ShortTag(), "!!"), v)
		}
	}
	return "something else"
}

// expected names what a Go type accepts, for messages.
func expected(t reflect.Type) string {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(textUnmarshaler) {
		if dv, ok := reflect.New(t).Interface().(Describer); ok {
			return dv.Expected()
		}
		if h, ok := hints[t.String()]; ok {
			return h
		}
		return "a string"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct, reflect.Map:
		return "a mapping"
	case reflect.Slice:
		return "a list"
	case reflect.Array:
		return fmt.Sprintf("a list of %d entries", t.Len())
	}
	return t.String()
}

// hints say what text-decoded types look like.
var hints = map[string]string{
	"netip.Prefix": `an address with prefix length, e.g. "198.18.0.11/24"`,
	"netip.Addr":   `an IP address, e.g. "198.18.0.1"`,
}

// Describer is implemented by text-decoded types that say what they
// accept, e.g. `a duration such as "500ms"`.
type Describer interface{ Expected() string }

func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > 64 {
		d.fail(n, path, "nested too deeply")
		return
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			d.fail(n, path, "unresolved alias")
			return
		}
		n = n.Alias
	}
	if _, seen := d.pos[path]; !seen {
		d.pos[path] = Pos{n.Line, n.Column}
	}
	t := v.Type()
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		// An empty value leaves the zero value; validation decides
		// whether the field was required.
		v.Set(reflect.Zero(t))
		return
	}
	if t.Kind() == reflect.Pointer {
		nv := reflect.New(t.Elem())
		d.value(n, nv.Elem(), path)
		v.Set(nv)
		return
	}
	if reflect.PointerTo(t).Implements(textUnmarshaler) {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.fail(n, path, "expected %s, got %q: %v", expected(t), n.Value, err)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		d.mapping(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			d.fail(n, path, "expected true or false, got %s", describe(n))
			return
		}
		b, err := strconv.ParseBool(n.Value)
		if err != nil {
			d.fail(n, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.fail(n, path, "expected an integer, got %s", describe(n))
			return
		}
		i, err := strconv.ParseInt(n.Value, 0, t.Bits())
		if err != nil {
			d.fail(n, path, "expected an integer that fits %d bits, got %s", t.Bits(), describe(n))
			return
		}
		v.SetInt(i)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "expected a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.value(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Array:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "expected %s, got %s", expected(t), describe(n))
			return
		}
		if len(n.Content) != t.Len() {
			d.fail(n, path, "expected exactly %d entries, got %d", t.Len(), len(n.Content))
			return
		}
		for i, c := range n.Content {
			d.value(c, v.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
	default:
		d.fail(n, path, "strictyaml: unsupported Go type %s", t)
	}
}

// fieldName is the YAML key of a struct field ("" to skip it).
func fieldName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	tag := f.Tag.Get("yaml")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	t := v.Type()
	fields := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		if name := fieldName(t.Field(i)); name != "" {
			fields[name] = i
		}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "expected a field name, got %s", describe(k))
			continue
		}
		if k.Value == "<<" {
			d.fail(k, path, "merge keys (<<) are not supported, write the fields out")
			continue
		}
		fp := join(path, k.Value)
		idx, ok := fields[k.Value]
		if !ok {
			known := make([]string, 0, len(fields))
			for name := range fields {
				known = append(known, name)
			}
			sort.Strings(known)
			msg := fmt.Sprintf("unknown field %q", k.Value)
			if s := closest(k.Value, known); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			d.fail(k, fp, "%s; known fields here: %s", msg, strings.Join(known, ", "))
			continue
		}
		if seen[k.Value] {
			d.fail(k, fp, "field given twice")
			continue
		}
		seen[k.Value] = true
		d.pos[fp] = Pos{k.Line, k.Column}
		d.value(val, v.Field(idx), fp)
	}
}

// closest returns a known name equal to s ignoring case, or "".
func closest(s string, known []string) string {
	for _, k := range known {
		if strings.EqualFold(k, s) {
			return k
		}
	}
	return ""
}
