package hosttools

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

func fake(have map[string]bool, uid int) Env {
	return Env{
		LookPath: func(p string) (string, error) {
			if have[p] {
				return "/usr/bin/" + p, nil
			}
			return "", exec.ErrNotFound
		},
		Geteuid: func() int { return uid },
	}
}

func TestRequireNamesThePackage(t *testing.T) {
	e := fake(map[string]bool{"tar": true}, 0)
	if err := e.Require("build", "tar"); err != nil {
		t.Fatal(err)
	}
	err := e.Require("build", "tar", "mksquashfs", "qemu-img", "unsquashfs")
	var me *MissingError
	if !errors.As(err, &me) {
		t.Fatalf("err = %v", err)
	}
	for _, w := range []string{"mksquashfs", "qemu-img", "squashfs-tools", "qemu-utils", "apt-get install qemu-utils squashfs-tools", "make deps"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q does not mention %q", err, w)
		}
	}
}

func TestRootSaysSo(t *testing.T) {
	if err := fake(nil, 0).Root("base", "x"); err != nil {
		t.Fatal(err)
	}
	err := fake(nil, 1000).Root("base", "mmdebstrap --mode=root")
	if !errors.Is(err, ErrNotRoot) || !strings.Contains(err.Error(), "run the builder as root") || !strings.Contains(err.Error(), "mmdebstrap") {
		t.Errorf("err = %v", err)
	}
}
