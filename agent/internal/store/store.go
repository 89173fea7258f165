// Package store persists the agent's durable state (term, last database role,
// k3s epoch, last failover) in one JSON file, replaced atomically and fsync'd
// (file and directory) before Save returns.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// State is what must survive a crash or reboot.
type State struct {
	Term         uint64    `json:"term"`
	LastRole     string    `json:"lastRole"` // "primary", "standby" or "" (never ran)
	K3sEpoch     uint64    `json:"k3sEpoch"`
	LastFailover time.Time `json:"lastFailover,omitzero"`
}

// File stores State at Path.
type File struct{ Path string }

// Load returns the stored state, or the zero State if none was saved yet.
func (f File) Load() (State, error) {
	var s State
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("state file %s: %w", f.Path, err)
	}
	return s, nil
}

// Save writes s durably: temp file, fsync, rename, fsync of the directory.
func (f File) Save(s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(f.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return fmt.Errorf("state temp: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), f.Path); err != nil {
		return fmt.Errorf("rename state: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync state dir: %w", err)
	}
	return nil
}
