// Package hosttools checks that the build host has the programs a stage runs
// and the privileges it needs, and says how to fix it when not.
package hosttools

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
)

// Packages maps each host program the builder runs to its Debian package.
var Packages = map[string]string{
	"mmdebstrap": "mmdebstrap",
	"mksquashfs": "squashfs-tools",
	"unsquashfs": "squashfs-tools",
	"mkfs.erofs": "erofs-utils",
	"qemu-img":   "qemu-utils",
	"tar":        "tar",
	"cp":         "coreutils",
	"go":         "golang (or Go from go.dev)",
}

// Env is what the checks look at; tests replace it.
type Env struct {
	LookPath func(string) (string, error)
	Geteuid  func() int
}

// Host is the real machine.
var Host = Env{LookPath: exec.LookPath, Geteuid: os.Geteuid}

// MissingError lists missing programs with the packages that provide them.
type MissingError struct {
	Stage    string
	Programs []string
}

func (e *MissingError) Error() string {
	var pk []string
	seen := map[string]bool{}
	for _, p := range e.Programs {
		if pkg := Packages[p]; !seen[pkg] {
			seen[pkg] = true
			pk = append(pk, pkg)
		}
	}
	sort.Strings(pk)
	return fmt.Sprintf("%s needs %s, not found in PATH: install the Debian package(s) %s (apt-get install %s, or `make deps`)",
		e.Stage, strings.Join(e.Programs, ", "), strings.Join(pk, ", "), strings.Join(pk, " "))
}

// ErrNotRoot is wrapped by errors from Root.
var ErrNotRoot = errors.New("needs root")

// Require checks that every program is in PATH.
func (e Env) Require(stage string, programs ...string) error {
	var missing []string
	for _, p := range programs {
		if _, err := e.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return &MissingError{Stage: stage, Programs: missing}
	}
	return nil
}

// Root checks that the process runs as root; why says what the stage does
// that needs it.
func (e Env) Root(stage, why string) error {
	if e.Geteuid() != 0 {
		return fmt.Errorf("%s %w (%s): run the builder as root, e.g. sudo bin/builder build ...", stage, ErrNotRoot, why)
	}
	return nil
}
