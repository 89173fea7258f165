package harness

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestDetectAccel(t *testing.T) {
	tests := []struct {
		name     string
		devKVM   bool // /dev/kvm opens read-write
		modules  []string
		override string
		want     string
		wantErr  bool
	}{
		{name: "no /dev/kvm", want: "tcg"},
		{name: "hardware kvm_intel", devKVM: true, modules: []string{"kvm", "kvm_intel"}, want: "kvm"},
		{name: "hardware kvm_amd", devKVM: true, modules: []string{"kvm", "kvm_amd"}, want: "kvm"},
		{name: "nested paravirtual kvm_pvm", devKVM: true, modules: []string{"kvm", "kvm_pvm"}, want: "tcg"},
		{name: "module but no device", modules: []string{"kvm_intel"}, want: "tcg"},
		{name: "override tcg on real kvm", devKVM: true, modules: []string{"kvm_intel"}, override: "tcg", want: "tcg"},
		{name: "override kvm", override: "KVM", want: "kvm"},
		{name: "bad override", override: "hvf", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, m := range tt.modules {
				if err := os.MkdirAll(filepath.Join(root, "sys/module", m), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			probe := func(p string) bool { return tt.devKVM && p == filepath.Join(root, "dev/kvm") }
			got, err := DetectAccelIn(root, tt.override, probe)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), AccelEnv) {
					t.Fatalf("want an error naming %s, got %v", AccelEnv, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Name != tt.want {
				t.Fatalf("accel = %s (%s), want %s", got.Name, got.Reason, tt.want)
			}
			wantArgs := map[string]string{"tcg": "q35,accel=tcg -cpu max", "kvm": "q35,accel=kvm -cpu host"}[tt.want]
			if !strings.Contains(strings.Join(got.Args, " "), wantArgs) || got.Reason == "" {
				t.Fatalf("args %q reason %q", got.Args, got.Reason)
			}
		})
	}
}

func TestFindOVMF(t *testing.T) {
	empty, full := t.TempDir(), t.TempDir()
	for _, f := range []string{"OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"} {
		if err := os.WriteFile(filepath.Join(full, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o, err := FindOVMF(empty, full)
	if err != nil || o.Code != filepath.Join(full, "OVMF_CODE_4M.fd") || o.Vars != filepath.Join(full, "OVMF_VARS_4M.fd") {
		t.Fatalf("FindOVMF = %+v, %v", o, err)
	}
	if _, err := FindOVMF(empty); err == nil || !strings.Contains(err.Error(), "ovmf") {
		t.Fatalf("want an error naming the ovmf package, got %v", err)
	}
}

func testMachine() *Machine {
	cfg := Config{
		Name: "node-a", Dir: "/art/run-1/node-a", BaseDisk: "/dist/edgepair-debian-12.qcow2", BaseFormat: "qcow2",
		DiskSize: "8G", MemoryMB: 2048, CPUs: 2, CDROM: "/art/run-1/seed-a.iso",
		NICs:      []NIC{{Tap: "ep-tap0"}, {User: true, HostFwd: []string{"tcp:127.0.0.1:2222-:22"}}},
		ExtraArgs: []string{"-snapshot"},
		Accel:     tcgAccel("test"), OVMF: OVMF{Code: "/fw/OVMF_CODE_4M.fd", Vars: "/fw/OVMF_VARS_4M.fd"},
		NetNS: "ep-test-ns", QEMU: "qemu-system-x86_64", Log: slog.New(slog.DiscardHandler),
	}
	return newMachine(cfg, "/tmp/ep-node-a-1")
}

func TestCommandLineGolden(t *testing.T) {
	got := testMachine().CommandLine() + "\n"
	golden := filepath.Join("testdata", "cmdline.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("command line changed (go test -update to accept):\n got: %s\nwant: %s", got, want)
	}
}

func TestArgs(t *testing.T) {
	m := testMachine()
	a := strings.Join(m.Args(), " ")
	for _, want := range []string{
		"ip netns exec ep-test-ns qemu-system-x86_64 ",
		"-machine q35,accel=tcg -cpu max",
		"if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE_4M.fd",
		"if=pflash,format=raw,unit=1,file=/art/run-1/node-a/OVMF_VARS.fd",
		"file=/art/run-1/node-a/disk.qcow2",
		"media=cdrom,readonly=on,format=raw,file=/art/run-1/seed-a.iso",
		"-chardev file,id=con0,path=/art/run-1/node-a/console.txt,append=on -serial chardev:con0",
		"socket,id=ts0,path=/tmp/ep-node-a-1/testshell.sock,server=on,wait=off",
		"virtserialport,bus=vser0.0,chardev=ts0,name=org.edgepair.testshell",
		"tap,id=net0,ifname=ep-tap0,script=no,downscript=no",
		"virtio-net-pci,netdev=net0,mac=" + MACFor("node-a", 0),
		"user,id=net1,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("command line lacks %q:\n%s", want, a)
		}
	}
	if !strings.HasSuffix(a, " -snapshot") {
		t.Errorf("extra args not last: %s", a)
	}
	ov := strings.Join(m.OverlayCommand(), " ")
	if ov != "qemu-img create -q -f qcow2 -b /dist/edgepair-debian-12.qcow2 -F qcow2 /art/run-1/node-a/disk.qcow2 8G" {
		t.Errorf("overlay command: %s", ov)
	}
}

func TestMACFor(t *testing.T) {
	a, b := MACFor("node-a", 0), MACFor("node-b", 0)
	re := regexp.MustCompile(`^52:54:[0-9a-f]{2}(:[0-9a-f]{2}){3}$`)
	if !re.MatchString(a) || a == b || a != MACFor("node-a", 0) || a == MACFor("node-a", 1) {
		t.Fatalf("MACs not deterministic/unique: %s %s %s", a, b, MACFor("node-a", 1))
	}
}

func TestShellQuoteRoundTrip(t *testing.T) {
	argv := []string{"printf", `%s\n`, "plain", "with space", "it's", "", "$HOME", "a;b", "ünï"}
	out, err := exec.Command("/bin/sh", "-c", ShellQuote(argv)).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join(argv[2:], "\n") + "\n"
	if string(out) != want {
		t.Fatalf("round trip:\n got %q\nwant %q", out, want)
	}
}

func TestScanConsole(t *testing.T) {
	text := strings.Join([]string{
		"[    0.000000] Linux version 6.1.0-28-amd64",
		"[    0.000000] Command line: console=ttyS0 panic=10 oops=panic",
		"[  OK  ] Reached target \x1b[0;1;39mMulti-User System\x1b[0m.",
		"[    5.1] Kernel panic - not syncing: VFS: Unable to mount root fs",
		"[    6.2] Oops: 0000 [#1] PREEMPT SMP NOPTI",
		"[    6.3] BUG: kernel NULL pointer dereference, address: 0000000000000008",
		"[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39medgepair-agent.service\x1b[0m - edgepair agent.",
		"[DEPEND] Dependency failed for k3s.service.",
		"You are in emergency mode. After logging in, type \"journalctl -xb\" to view",
		"Nov 25 02:00:00 node-a edgepair-agent[812]: panic: runtime error: index out of range",
		"goroutine 1 [running]:",
		"[  99.1] postgres invoked oom-killer: gfp_mask=0x140cca",
		"systemd[1]: basic.target: Found ordering cycle on sysinit.target/start",
		"[ 120.0] INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
		"[   92.799074] watchdog: BUG: soft lockup - CPU#1 stuck for 25s! [init:86]",
		"everything is fine, no panic here",
	}, "\n")
	got := ScanConsole(text)
	var kinds []string
	for _, f := range got {
		kinds = append(kinds, f.Kind)
	}
	want := []string{"kernel panic", "kernel oops", "kernel BUG", "failed unit", "failed dependency", "emergency mode",
		"go panic", "go panic", "oom killer", "ordering cycle", "hung task", "soft lockup"}
	if strings.Join(kinds, ",") != strings.Join(want, ",") {
		t.Fatalf("kinds:\n got %q\nwant %q\n%v", kinds, want, got)
	}
	for i, f := range got {
		if f.Warning != (i == len(got)-1) {
			t.Errorf("%s: warning=%v (only soft lockups are warnings)", f.Kind, f.Warning)
		}
	}
	if got[0].Line != 4 || strings.Contains(got[3].Text, "\x1b") {
		t.Fatalf("line numbers or escapes wrong: %+v", got[:4])
	}
	if f := ScanConsole("[  OK  ] Started edgepair-agent.service\nlogin: "); len(f) != 0 {
		t.Fatalf("clean console gave findings: %v", f)
	}
}

// shPeer starts a real /bin/sh whose stdin and stdout/stderr are one end of a socket
// pair, like the guest's shell on the virtio port, and returns the other end.
func shPeer(t *testing.T) (io.ReadWriteCloser, *exec.Cmd) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	guest := os.NewFile(uintptr(fds[0]), "guest")
	host := os.NewFile(uintptr(fds[1]), "host")
	cmd := exec.Command("/bin/sh")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = guest, guest, guest
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	guest.Close()
	c, err := net.FileConn(host)
	host.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return c, cmd
}

func newTestShell(t *testing.T) (*Shell, *[]*exec.Cmd) {
	var shells []*exec.Cmd
	s := NewShell(func(context.Context) (io.ReadWriteCloser, error) {
		c, cmd := shPeer(t)
		shells = append(shells, cmd)
		// Noise a freshly started guest shell may print before any command.
		_, _ = c.Write(nil)
		return c, nil
	})
	s.RemoteDir = t.TempDir()
	t.Cleanup(s.Close)
	return s, &shells
}

func TestShellRun(t *testing.T) {
	s, _ := newTestShell(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cases := []struct {
		script         string
		stdout, stderr string
		code           int
	}{
		{"echo hello", "hello\n", "", 0},
		{"printf 'no newline'", "no newline", "", 0},
		{"printf '\\000\\001\\377binary'", "\x00\x01\xffbinary", "", 0},
		{"echo out; echo err >&2; exit 3", "out\n", "err\n", 3},
		{"cat", "", "", 0}, // stdin is /dev/null: must not eat the shell's input
		{"echo '@@EP-END fake 0@@'; echo \"it's\" \"$((1+2))\"", "@@EP-END fake 0@@\nit's 3\n", "", 0},
		{"for i in $(seq 1 20000); do echo line $i; done | tail -n 1", "line 20000\n", "", 0},
		{"x=$(head -c 300000 /dev/zero | tr '\\0' a); echo ${#x}", "300000\n", "", 0},
		{"nosuchcommand-ep", "", "", 127},
	}
	for _, c := range cases {
		r, err := s.Run(ctx, c.script)
		if err != nil {
			t.Fatalf("%q: %v", c.script, err)
		}
		if string(r.Stdout) != c.stdout || r.ExitCode != c.code || (c.stderr != "" && string(r.Stderr) != c.stderr) {
			t.Fatalf("%q: got stdout %q stderr %q code %d; want %q %q %d", c.script, r.Stdout, r.Stderr, r.ExitCode, c.stdout, c.stderr, c.code)
		}
	}
	entries, _ := os.ReadDir(s.RemoteDir)
	if len(entries) != 0 {
		t.Fatalf("guest command files left behind: %v", entries)
	}
}

func TestShellTimeoutAndReconnect(t *testing.T) {
	s, shells := newTestShell(t)
	ctx := context.Background()
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	start := time.Now()
	_, err := s.Run(short, "sleep 30")
	cancel()
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("timed out command: err=%v after %s", err, time.Since(start))
	}
	r, err := s.Run(ctx, "echo after-timeout")
	if err != nil || string(r.Stdout) != "after-timeout\n" {
		t.Fatalf("after timeout: %q %v", r.Stdout, err)
	}
	// The guest shell dies (reboot, QEMU restart): the next command fails, the one
	// after that dials a new shell.
	cur := (*shells)[len(*shells)-1]
	_ = cur.Process.Kill()
	_ = cur.Wait()
	if _, err := s.Run(ctx, "echo dead"); err == nil {
		t.Fatal("command on a dead shell succeeded")
	}
	if err := s.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	r, err = s.Run(ctx, "echo back")
	if err != nil || string(r.Stdout) != "back\n" {
		t.Fatalf("after reconnect: %q %v", r.Stdout, err)
	}
	if len(*shells) < 3 {
		t.Fatalf("expected new connections after timeout and death, got %d", len(*shells))
	}
}

func TestShellIgnoresStaleFrames(t *testing.T) {
	c, _ := shPeer(t)
	// Output of an earlier command whose caller gave up, then ours.
	if _, err := io.WriteString(c, "printf '\\n@@EP-BEGIN old-1@@\\nAAAA\\n@@EP-MID old-1@@\\n\\n@@EP-END old-1 0@@\\n'\n"); err != nil {
		t.Fatal(err)
	}
	s := NewShell(func(context.Context) (io.ReadWriteCloser, error) { return c, nil })
	s.RemoteDir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := s.Run(ctx, "echo mine")
	if err != nil || string(r.Stdout) != "mine\n" {
		t.Fatalf("got %q %v", r.Stdout, err)
	}
}

func TestNewRunDir(t *testing.T) {
	root := t.TempDir()
	d1, err := NewRunDir(root, "qemu", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	d2, err := NewRunDir(root, "qemu", time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	target, err := os.Readlink(filepath.Join(root, "qemu-latest"))
	if err != nil || target != filepath.Base(d2) || d1 == d2 {
		t.Fatalf("latest -> %q (%v), runs %s %s", target, err, d1, d2)
	}
}

func TestPortState(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "qtree-vserport.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := portState(string(b), TestShellPort)
	if err != nil || got != "port 1, guest on, host off, throttle off" {
		t.Errorf("portState = %q, %v", got, err)
	}
	if _, err := portState(string(b), "org.example.other"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("unknown port: err = %v, want not found", err)
	}
	if _, err := portState(`name = "`+TestShellPort+`"`, TestShellPort); err == nil || !strings.Contains(err.Error(), "no state line") {
		t.Errorf("name without state line: err = %v", err)
	}
}
