//go:build qemu

package harness

import (
	"context"
	"fmt"
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
	img := testImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	m := newTestMachine(t, ctx, "harness-smoke", img)
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

// testImage is the image the harness tests boot: EDGEPAIR_IMAGE, else
// dist/edgepair-debian-12.qcow2 (make image); it skips t when there is none or no QEMU.
func testImage(t *testing.T) string {
	t.Helper()
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
	return img
}

// newTestMachine creates (does not start) a machine named name on img with a user
// network, its folder under EDGEPAIR_ARTIFACTS (else a temporary one), closed with t.
func newTestMachine(t *testing.T, ctx context.Context, name, img string) *Machine {
	t.Helper()
	dir := os.Getenv("EDGEPAIR_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	m, err := New(ctx, Config{Name: name, Dir: filepath.Join(dir, name), BaseDisk: img, DiskSize: "4G",
		NICs: []NIC{{User: true}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
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

// TestShellChurn boots the image once, checks that the test shell's unit starts from
// a "change" uevent of its port alone, and then runs commands through the test shell with
// deadlines that often end before the command does, so the harness keeps hanging up
// and redialling while the guest shell is reading, running or writing. After every
// abandoned command a plain command must answer within a minute: a channel that
// stays silent fails the test with QEMU's view of the port. Between commands it also
// hangs up while the guest shell is idle and dials again after a pause. EDGEPAIR_SHELL_CHURN sets
// how long to churn (a Go duration, default 90s; the old unit lost a command within
// about 25 idle hang-ups, about 2.5 min).
func TestShellChurn(t *testing.T) {
	img := testImage(t)
	churn := 90 * time.Second
	if v := os.Getenv("EDGEPAIR_SHELL_CHURN"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("EDGEPAIR_SHELL_CHURN=%q: want a positive Go duration such as 10m", v)
		}
		churn = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), churn+15*time.Minute)
	defer cancel()
	m := newTestMachine(t, ctx, "shell-churn", img)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Boot with short probes, as the pair and seed tests do: each unanswered probe
	// hangs up while the guest is starting the shell.
	if err := m.WaitExecReady(ctx); err != nil {
		con, _ := m.Console()
		t.Fatalf("%v\nconsole tail: %s", err, tail(con, 2000))
	}
	st, err := m.TestShellPortState(ctx)
	if err != nil {
		t.Fatalf("port state: %v", err)
	}
	if !strings.Contains(st, "guest on") || !strings.Contains(st, "host on") {
		t.Errorf("port state with an answering shell = %q, want guest on and host on", st)
	}
	t.Logf("port state: %s", st)

	// The unit must also start from a "change" uevent alone: Linux names a virtio
	// port after its "add" uevent and announces the name with a "change", and a
	// rule that only watched "add" left the shell dead on some boots (CI, stop 8).
	// Stop the shell and send only a "change" for its port, from a transient unit.
	inv1, err := m.ExecOK(ctx, "systemctl show -p InvocationID --value edgepair-testshell.service")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.ExecOK(ctx, `systemd-run --quiet --unit=edgepair-testshell-change --on-active=1 /bin/sh -c `+
		`'systemctl stop edgepair-testshell.service; udevadm trigger --action=change "/sys/class/virtio-ports/$(basename "$(readlink -f /dev/virtio-ports/org.edgepair.testshell)")"'`); err != nil {
		t.Fatal(err)
	}
	m.Shell().Reset()
	time.Sleep(3 * time.Second)
	cctx, ccancel := context.WithTimeout(ctx, 2*time.Minute)
	err = m.WaitExecReady(cctx)
	ccancel()
	if err != nil {
		t.Fatalf("test shell after stop and a change uevent: %v", err)
	}
	inv2, err := m.ExecOK(ctx, "systemctl show -p InvocationID --value edgepair-testshell.service")
	if err != nil || strings.TrimSpace(inv2) == "" || inv2 == inv1 {
		t.Fatalf("test shell invocation %q before, %q (%v) after the change uevent: want a new one", strings.TrimSpace(inv1), strings.TrimSpace(inv2), err)
	}
	t.Logf("test shell restarted by a change uevent alone (invocation %s -> %s)", strings.TrimSpace(inv1), strings.TrimSpace(inv2))

	end := time.Now().Add(churn)
	var abandoned, answered, hangups int
	// mustAnswer fails t unless a plain command answers within a minute.
	mustAnswer := func() {
		actx, acancel := context.WithTimeout(ctx, time.Minute)
		out, err := m.ExecOK(actx, "echo alive")
		acancel()
		if err != nil || out != "alive\n" {
			t.Fatalf("after %d idle hang-ups, %d abandoned and %d answered commands, the shell is silent (%q, %v) [%s]", hangups, abandoned, answered, out, err, m.PortStateNote())
		}
	}
	for i := 0; time.Now().Before(end); i++ {
		// Hang up while the guest shell is idle in its read, then dial again after
		// 0 to 1.5 s, as WaitReady does between probes while the guest boots.
		m.Shell().Reset()
		hangups++
		time.Sleep(time.Duration((i*173)%1500) * time.Millisecond)
		mustAnswer()
		// Deadlines from 20 ms to 2.5 s against commands of 0 to 1.5 s that write
		// up to 64 KiB, so hang-ups land before, during and after the answer.
		limit := time.Duration(20+(i*137)%2480) * time.Millisecond
		sleep := float64((i*53)%16) / 10
		cctx, ccancel := context.WithTimeout(ctx, limit)
		_, _, err := m.Exec(cctx, fmt.Sprintf("sleep %.1f; head -c %d /dev/zero | tr '\\0' x", sleep, (i*4099)%65536))
		ccancel()
		if err == nil {
			answered++
			continue
		}
		abandoned++
		mustAnswer()
	}
	t.Logf("%s of churn: %d commands answered, %d abandoned, %d idle hang-ups; the shell answered after every hang-up", churn, answered, abandoned, hangups)
	if abandoned == 0 || answered == 0 {
		t.Errorf("churn exercised %d abandoned and %d answered commands, want both", abandoned, answered)
	}
}
