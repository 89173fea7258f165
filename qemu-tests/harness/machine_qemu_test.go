//go:build qemu

package harness

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestMachineLifecycle boots the real image and drives the harness through a whole
// machine life: test shell, clean reboot (shell reconnects), hard power-off and
// power-on of the same disk, console and journal artifacts. Image: EDGEPAIR_IMAGE,
// else dist/edgepair-debian-12.qcow2 (make image).
func TestMachineLifecycle(t *testing.T) {
	img := os.Getenv("EDGEPAIR_IMAGE")
	if img == "" {
		img = filepath.Join("..", "..", "dist", "edgepair-debian-12.qcow2")
	}
	if _, err := os.Stat(img); err != nil {
		t.Skipf("no image to boot (%v): run make image or set EDGEPAIR_IMAGE", err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 not installed (make deps)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := os.Getenv("EDGEPAIR_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	m, err := New(ctx, Config{Name: "harness-smoke", Dir: filepath.Join(dir, "harness-smoke"), BaseDisk: img, DiskSize: "4G",
		NICs: []NIC{{User: true}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("accelerator %s (%s); artifacts %s", m.Accel().Name, m.Accel().Reason, m.Dir())

	t0 := time.Now()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitExecReady(ctx); err != nil {
		con, _ := m.Console()
		t.Fatalf("%v\nconsole tail: %s", err, tail(con, 2000))
	}
	t.Logf("boot to test shell: %s", time.Since(t0).Round(100*time.Millisecond))
	if _, err := m.WaitConsole(ctx, regexp.MustCompile(`Linux version`)); err != nil {
		t.Errorf("console log: %v", err)
	}
	out, code, err := m.Exec(ctx, "id -u; echo err >&2; exit 7")
	if err != nil || out != "0\n" || code != 7 {
		t.Fatalf("exec: %q %d %v", out, code, err)
	}
	if _, err := m.ExecOK(ctx, "false"); err == nil {
		t.Fatal("ExecOK of false succeeded")
	}
	boot1, err := m.ExecOK(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	// A file on the data partition (persistent) for the power-off check below.
	if _, err := m.ExecOK(ctx, "echo kept > /var/lib/harness-smoke && sync"); err != nil {
		t.Fatal(err)
	}

	t.Run("in-guest reboot", func(t *testing.T) {
		if m.Accel().Name != "kvm" {
			// Skipped with the reason, not passed: under TCG with QEMU 7.2 OVMF
			// can spin in PEI after the warm reset for many minutes (seen in
			// CI's rehearsal and by the boot test), so the boot and seed tests
			// power-cycle instead; the power-off/on below covers reconnecting.
			t.Skip("in-guest reboot is exercised only under KVM: under TCG OVMF can stall after the warm reset")
		}
		rebootStep(t, ctx, m, boot1)
	})

	if err := m.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	if m.Running() {
		t.Fatal("still running after PowerOff")
	}
	if _, _, err := m.Exec(ctx, "true"); err == nil {
		t.Fatal("exec on a powered-off machine succeeded")
	}
	t2 := time.Now()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitExecReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("power-on after hard power-off to test shell: %s", time.Since(t2).Round(100*time.Millisecond))
	if out, err := m.ExecOK(ctx, "cat /var/lib/harness-smoke"); err != nil || out != "kept\n" {
		t.Errorf("file on the data partition after power-off: %q %v", out, err)
	}
	p, err := m.JournalExtract(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Size() == 0 {
		t.Fatalf("journal extract %s empty: %v", p, err)
	}
	if b, err := os.ReadFile(filepath.Join(m.Dir(), "cmdline.txt")); err != nil || !strings.Contains(string(b), "org.edgepair.testshell") {
		t.Fatalf("cmdline.txt: %v", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 3*time.Minute)
	defer scancel()
	if err := m.Shutdown(sctx); err != nil {
		t.Errorf("clean shutdown: %v", err)
	}
	findings, err := m.ScanConsole()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range findings {
		if f.Warning {
			t.Logf("console warning: %s", f)
		} else {
			t.Errorf("console: %s", f)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// rebootStep reboots m from inside and waits for a new boot's test shell.
func rebootStep(t *testing.T, ctx context.Context, m *Machine, boot1 string) {
	t1 := time.Now()
	if err := m.Reboot(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		boot2, err := m.ExecOK(sctx, "cat /proc/sys/kernel/random/boot_id")
		scancel()
		if err == nil && boot2 != boot1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no new boot after reboot: %v", err)
		}
		time.Sleep(time.Second)
	}
	t.Logf("clean reboot to test shell: %s", time.Since(t1).Round(100*time.Millisecond))
}
