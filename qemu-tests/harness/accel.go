package harness

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AccelEnv is the environment variable that overrides accelerator detection.
const AccelEnv = "EDGEPAIR_ACCEL"

// Accel is the chosen QEMU accelerator with the arguments that select it.
type Accel struct {
	Name   string   // "kvm" or "tcg"
	Args   []string // -machine/-cpu arguments
	Reason string   // why this accelerator was chosen (for logs and reports)
}

func kvmAccel(reason string) Accel {
	return Accel{Name: "kvm", Args: []string{"-machine", "q35,accel=kvm", "-cpu", "host"}, Reason: reason}
}

func tcgAccel(reason string) Accel {
	return Accel{Name: "tcg", Args: []string{"-machine", "q35,accel=tcg", "-cpu", "max"}, Reason: reason}
}

// DetectAccel chooses the accelerator for this host: EDGEPAIR_ACCEL=kvm|tcg wins;
// otherwise KVM only when /dev/kvm can be opened AND a hardware KVM module
// (/sys/module/kvm_intel or /sys/module/kvm_amd) is loaded. A /dev/kvm backed by
// something else (kvm_pvm, a nested paravirtual hypervisor) hangs stock kernels and
// aborts on -cpu host, so it falls back to TCG.
func DetectAccel() (Accel, error) {
	return DetectAccelIn("/", os.Getenv(AccelEnv), canOpenRW)
}

// DetectAccelIn is DetectAccel against a root directory (for /sys and /dev), an
// override value and a probe that tells whether a device node can be opened.
func DetectAccelIn(root, override string, canOpen func(path string) bool) (Accel, error) {
	switch strings.ToLower(strings.TrimSpace(override)) {
	case "":
	case "tcg":
		return tcgAccel(AccelEnv + "=tcg"), nil
	case "kvm":
		return kvmAccel(AccelEnv + "=kvm"), nil
	default:
		return Accel{}, fmt.Errorf("%s=%q: want \"kvm\", \"tcg\" or unset (auto-detect)", AccelEnv, override)
	}
	dev := filepath.Join(root, "dev/kvm")
	if !canOpen(dev) {
		return tcgAccel(dev + " is missing or cannot be opened read-write"), nil
	}
	for _, mod := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(filepath.Join(root, "sys/module", mod)); err == nil {
			return kvmAccel(dev + " usable and " + mod + " loaded"), nil
		}
	}
	return tcgAccel(dev + " exists but neither kvm_intel nor kvm_amd is loaded (nested/paravirtual KVM such as kvm_pvm hangs stock kernels)"), nil
}

func canOpenRW(path string) bool {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	_ = f.Close()
	return true
}

// OVMF names the UEFI firmware: the read-only code image and the template of the
// variable store (each machine gets its own copy).
type OVMF struct {
	Code string
	Vars string
}

// DefaultOVMFDirs is where Debian's ovmf package installs the firmware.
var DefaultOVMFDirs = []string{"/usr/share/OVMF", "/usr/share/ovmf"}

// ErrNoOVMF is returned when no OVMF firmware pair is found.
var ErrNoOVMF = errors.New("OVMF firmware not found (install the Debian package ovmf)")

// FindOVMF finds OVMF_CODE_4M.fd with OVMF_VARS_4M.fd in dirs (DefaultOVMFDirs when
// none are given).
func FindOVMF(dirs ...string) (OVMF, error) {
	if len(dirs) == 0 {
		dirs = DefaultOVMFDirs
	}
	for _, d := range dirs {
		o := OVMF{Code: filepath.Join(d, "OVMF_CODE_4M.fd"), Vars: filepath.Join(d, "OVMF_VARS_4M.fd")}
		if fileExists(o.Code) && fileExists(o.Vars) {
			return o, nil
		}
	}
	return OVMF{}, fmt.Errorf("%w: looked for OVMF_CODE_4M.fd and OVMF_VARS_4M.fd in %s", ErrNoOVMF, strings.Join(dirs, ", "))
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
