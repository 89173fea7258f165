package strictyaml

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

type inner struct {
	Addr netip.Addr `yaml:"addr"`
	On   bool       `yaml:"on"`
}

type doc struct {
	Name  string   `yaml:"name"`
	Count int      `yaml:"count"`
	Small int8     `yaml:"small"`
	List  []string `yaml:"list"`
	Pair  [2]inner `yaml:"pair"`
	Opt   *inner   `yaml:"opt,omitempty"`
	Skip  string   `yaml:"-"`
	Plain string
}

func TestDecodeOK(t *testing.T) {
	var d doc
	pos, err := Decode([]byte("name: x\ncount: 0x10\nlist: [a, b]\npair:\n  - {addr: 198.18.0.1, on: true}\n  - addr: 198.18.0.2\nplain: p\n"), "f.yaml", &d)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "x" || d.Count != 16 || len(d.List) != 2 || !d.Pair[0].On || d.Pair[1].Addr != netip.MustParseAddr("198.18.0.2") || d.Opt != nil || d.Plain != "p" {
		t.Errorf("decoded %+v", d)
	}
	if p := pos["pair[1].addr"]; p.Line != 6 || p.Column != 5 {
		t.Errorf("position of pair[1].addr: %+v", p)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"name: [1]\n", "f.yaml:1:7: name: expected a string, got a list"},
		{"count: many\n", `f.yaml:1:8: count: expected an integer, got the string "many"`},
		{"small: 300\n", "f.yaml:1:8: small: expected an integer that fits 8 bits"},
		{"name: a\nname: b\n", "f.yaml:2:1: name: field given twice"},
		{"Name: a\n", `f.yaml:1:1: Name: unknown field "Name" (did you mean "name"?)`},
		{"skip: a\n", `unknown field "skip"`},
		{"pair: [{}, {}, {}]\n", "pair: expected exactly 2 entries, got 3"},
		{"pair:\n  - addr: 1.2.3\n  - {}\n", `f.yaml:2:11: pair[0].addr: expected an IP address`},
		{"pair:\n  - on: yes please\n  - {}\n", "pair[0].on: expected true or false"},
		{"a: &x {}\n<<: *x\n", "merge keys"},
		{"- 1\n", "expected a mapping, got a list"},
		{"name: a\n---\nname: b\n", "f.yaml:2:1: more than one YAML document"},
		{"name: [\n", "f.yaml: not valid YAML"},
		{"", "f.yaml: file is empty"},
		{"# only a comment\n", "file is empty"},
	} {
		var d doc
		_, err := Decode([]byte(tt.in), "f.yaml", &d)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: got %v, want %q", tt.in, err, tt.want)
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%q: %T is not a *FieldError", tt.in, err)
		}
	}
}

func TestDecodeAliasAndNull(t *testing.T) {
	var d doc
	_, err := Decode([]byte("name: &n shared\nplain: *n\nopt:\nlist: ~\n"), "f", &d)
	if err != nil {
		t.Fatal(err)
	}
	if d.Plain != "shared" || d.Opt != nil || d.List != nil {
		t.Errorf("%+v", d)
	}
}

func TestTooManyErrors(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 50; i++ {
		b.WriteString("x" + strings.Repeat("y", i) + ": 1\n")
	}
	var d doc
	_, err := Decode([]byte(b.String()), "f", &d)
	if n := strings.Count(err.Error(), "\n") + 1; n != maxErrors+1 || !strings.Contains(err.Error(), "too many errors") {
		t.Errorf("%d lines:\n%v", n, err)
	}
}

func TestLocate(t *testing.T) {
	pos := Positions{"a": {3, 1}, "a.b": {4, 3}}
	err := errors.Join(&FieldError{Path: "a.b.c", Msg: "m1"}, &FieldError{Path: "z", Msg: "m2"})
	got := pos.Locate(err, "f.yaml").Error()
	if got != "f.yaml:4:3: a.b.c: m1\nf.yaml: z: m2" {
		t.Errorf("got %q", got)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("name: x\npair: [{addr: 1.2.3.4}, {on: true}]\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var d doc
		_, err := Decode(data, "fuzz", &d)
		if err != nil && !strings.HasPrefix(err.Error(), "fuzz") {
			t.Fatalf("error without the file name: %v", err)
		}
	})
}
