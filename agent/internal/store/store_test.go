package store

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	f := File{Path: filepath.Join(t.TempDir(), "sub", "state.json")}
	s, err := f.Load()
	if err != nil || s != (State{}) {
		t.Fatalf("empty load: %+v %v", s, err)
	}
	want := State{Term: 4, LastRole: "primary", K3sEpoch: 2, LastFailover: time.Unix(1700000000, 0).UTC()}
	if err := f.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := f.Load()
	if err != nil || got != want {
		t.Fatalf("got %+v %v want %+v", got, err, want)
	}
	if err := os.WriteFile(f.Path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Load(); err == nil {
		t.Fatal("corrupt file accepted")
	}
}
