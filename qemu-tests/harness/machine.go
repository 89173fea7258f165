package harness

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TestShellPort is the virtio-serial port name the image's test shell listens on.
const TestShellPort = "org.edgepair.testshell"

// NIC is one network interface of a machine: either a tap device (already created,
// in the namespace QEMU runs in) or user-mode networking (restricted: no traffic
// leaves the VM except to forwarded ports).
type NIC struct {
	Tap  string // tap device name; empty means user-mode networking
	MAC  string // empty: MACFor(machine name, index)
	User bool   // user-mode networking (ignored when Tap is set)
	// HostFwd are user-mode forwards such as "tcp:127.0.0.1:2222-:22".
	HostFwd []string
}

// Config describes one QEMU machine.
type Config struct {
	Name       string // machine name; also the QEMU -name and the MAC seed
	Dir        string // artifacts folder of this machine (created)
	BaseDisk   string // image the overlay is created on (raw or qcow2)
	BaseFormat string // "raw" or "qcow2"; empty: from the file name (.qcow2 or raw)
	DiskSize   string // virtual size of the overlay, e.g. "8G"; empty: the base's size
	MemoryMB   int    // default 2048
	CPUs       int    // default 2
	CDROM      string // optional ISO (for example a NoCloud seed)
	NICs       []NIC
	ExtraArgs  []string
	Accel      Accel  // zero value: DetectAccel()
	OVMF       OVMF   // zero value: FindOVMF()
	NetNS      string // when set, QEMU runs inside this named network namespace (ip netns exec)
	QEMU       string // default qemu-system-x86_64
	// KeepDisk keeps the overlay disk in the artifacts folder after Close (also
	// EDGEPAIR_KEEP_DISKS=1); by default Close removes it, as it can be gigabytes.
	KeepDisk bool
	Log      *slog.Logger
}

// Machine is one QEMU virtual machine with its overlay disk, console log, QMP socket
// and test shell. It can be started again after it stopped (power on after power off).
type Machine struct {
	cfg     Config
	disk    string
	vars    string
	console string
	sockDir string
	qmpPath string
	tsPath  string
	log     *slog.Logger
	shell   *Shell

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when the current QEMU process exited
	waitErr  error
	conStart int64 // console.txt size when the current QEMU process started
	starts   int
}

// MACFor returns a deterministic, locally administered unicast MAC address for the
// NIC with index idx of the named machine.
func MACFor(name string, idx int) string {
	h := sha256.Sum256([]byte(name + "/" + strconv.Itoa(idx)))
	return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3])
}

// New prepares a machine: its artifacts folder, its qcow2 overlay on the base disk and
// its copy of the UEFI variable store. It does not start QEMU.
func New(ctx context.Context, cfg Config) (*Machine, error) {
	if cfg.Name == "" {
		return nil, errors.New("harness.Config.Name is empty: every machine needs a name")
	}
	if cfg.Dir == "" {
		return nil, fmt.Errorf("machine %s: Config.Dir is empty: give it an artifacts folder", cfg.Name)
	}
	if cfg.BaseDisk == "" {
		return nil, fmt.Errorf("machine %s: Config.BaseDisk is empty: give it a raw or qcow2 image", cfg.Name)
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = 2048
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Accel.Name == "" {
		a, err := DetectAccel()
		if err != nil {
			return nil, err
		}
		cfg.Accel = a
	}
	if cfg.OVMF.Code == "" {
		o, err := FindOVMF()
		if err != nil {
			return nil, err
		}
		cfg.OVMF = o
	}
	base, err := filepath.Abs(cfg.BaseDisk)
	if err != nil {
		return nil, fmt.Errorf("machine %s: base disk: %w", cfg.Name, err)
	}
	if _, err := os.Stat(base); err != nil {
		return nil, fmt.Errorf("machine %s: base disk: %w", cfg.Name, err)
	}
	cfg.BaseDisk = base
	if cfg.BaseFormat == "" {
		cfg.BaseFormat = "raw"
		if strings.HasSuffix(base, ".qcow2") {
			cfg.BaseFormat = "qcow2"
		}
	}
	if cfg.CDROM != "" {
		if cfg.CDROM, err = filepath.Abs(cfg.CDROM); err != nil {
			return nil, fmt.Errorf("machine %s: cdrom: %w", cfg.Name, err)
		}
	}
	if cfg.Dir, err = filepath.Abs(cfg.Dir); err != nil {
		return nil, fmt.Errorf("machine %s: dir: %w", cfg.Name, err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("machine %s: %w", cfg.Name, err)
	}
	// Unix socket paths are limited to 108 bytes: keep the sockets in a short
	// private directory and record where they are.
	sockDir, err := os.MkdirTemp("", "ep-"+shortName(cfg.Name)+"-")
	if err != nil {
		return nil, fmt.Errorf("machine %s: socket dir: %w", cfg.Name, err)
	}
	m := newMachine(cfg, sockDir)
	if err := copyFile(cfg.OVMF.Vars, m.vars); err != nil {
		return nil, fmt.Errorf("machine %s: copy UEFI variables: %w", cfg.Name, err)
	}
	create := m.OverlayCommand()
	out, err := exec.CommandContext(ctx, create[0], create[1:]...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("machine %s: %s: %w: %s", cfg.Name, strings.Join(create, " "), err, strings.TrimSpace(string(out)))
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "cmdline.txt"), []byte(m.CommandLine()+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("machine %s: %w", cfg.Name, err)
	}
	return m, nil
}

// newMachine fills in the paths of a machine whose Config has its defaults applied.
func newMachine(cfg Config, sockDir string) *Machine {
	m := &Machine{
		cfg:     cfg,
		disk:    filepath.Join(cfg.Dir, "disk.qcow2"),
		vars:    filepath.Join(cfg.Dir, "OVMF_VARS.fd"),
		console: filepath.Join(cfg.Dir, "console.txt"),
		sockDir: sockDir,
		qmpPath: filepath.Join(sockDir, "qmp.sock"),
		tsPath:  filepath.Join(sockDir, "testshell.sock"),
		log:     cfg.Log.With("machine", cfg.Name),
	}
	m.shell = NewShell(m.dialTestShell)
	return m
}

func shortName(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// Name is the machine's name.
func (m *Machine) Name() string { return m.cfg.Name }

// Dir is the machine's artifacts folder.
func (m *Machine) Dir() string { return m.cfg.Dir }

// ConsolePath is the file the serial console is written to.
func (m *Machine) ConsolePath() string { return m.console }

// Accel is the accelerator the machine runs with.
func (m *Machine) Accel() Accel { return m.cfg.Accel }

// Shell is the machine's test shell client.
func (m *Machine) Shell() *Shell { return m.shell }

// OverlayCommand is the qemu-img command that creates the machine's overlay disk.
func (m *Machine) OverlayCommand() []string {
	c := []string{"qemu-img", "create", "-q", "-f", "qcow2", "-b", m.cfg.BaseDisk, "-F", m.cfg.BaseFormat, m.disk}
	if m.cfg.DiskSize != "" {
		c = append(c, m.cfg.DiskSize)
	}
	return c
}

// Args is the full command (argv) that runs the machine, including the
// `ip netns exec NS` prefix when the machine lives in a network namespace.
func (m *Machine) Args() []string {
	c := m.cfg
	var a []string
	if c.NetNS != "" {
		a = append(a, "ip", "netns", "exec", c.NetNS)
	}
	a = append(a, c.QEMU, "-name", c.Name)
	a = append(a, c.Accel.Args...)
	a = append(a,
		"-smp", strconv.Itoa(c.CPUs),
		"-m", strconv.Itoa(c.MemoryMB),
		"-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+c.OVMF.Code,
		"-drive", "if=pflash,format=raw,unit=1,file="+m.vars,
		"-drive", "if=none,id=disk0,format=qcow2,file="+m.disk,
		"-device", "virtio-blk-pci,drive=disk0,bootindex=1",
	)
	if c.CDROM != "" {
		a = append(a,
			"-drive", "if=none,id=cd0,media=cdrom,readonly=on,format=raw,file="+c.CDROM,
			"-device", "ide-cd,drive=cd0,bus=ide.1")
	}
	a = append(a,
		"-chardev", "file,id=con0,path="+m.console+",append=on",
		"-serial", "chardev:con0",
		"-chardev", "socket,id=qmp0,path="+m.qmpPath+",server=on,wait=off",
		"-mon", "chardev=qmp0,mode=control",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=ts0,path="+m.tsPath+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=ts0,name="+TestShellPort,
		"-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0",
	)
	for i, n := range c.NICs {
		mac := n.MAC
		if mac == "" {
			mac = MACFor(c.Name, i)
		}
		id := "net" + strconv.Itoa(i)
		if n.Tap != "" {
			a = append(a, "-netdev", "tap,id="+id+",ifname="+n.Tap+",script=no,downscript=no")
		} else {
			nd := "user,id=" + id + ",restrict=on"
			for _, f := range n.HostFwd {
				nd += ",hostfwd=" + f
			}
			a = append(a, "-netdev", nd)
		}
		a = append(a, "-device", "virtio-net-pci,netdev="+id+",mac="+mac)
	}
	return append(a, c.ExtraArgs...)
}

// CommandLine is Args as one shell-quoted line that can be pasted to rerun the
// machine by hand (after the overlay command).
func (m *Machine) CommandLine() string {
	return "# overlay: " + ShellQuote(m.OverlayCommand()) + "\n" + ShellQuote(m.Args())
}

// ShellQuote joins argv into a line a POSIX shell splits back into the same argv.
func ShellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, s := range argv {
		if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=+,.:/@%") == "" {
			q[i] = s
			continue
		}
		q[i] = "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// Start launches QEMU. The process gets SIGKILL when the test binary dies
// (Pdeathsig), so it never outlives the harness. ctx bounds only the start-up (until
// the QMP socket answers), not the machine's life; use Stop, PowerOff or Close.
func (m *Machine) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.cmd != nil && !m.exitedLocked() {
		m.mu.Unlock()
		return fmt.Errorf("machine %s: already running (pid %d)", m.cfg.Name, m.cmd.Process.Pid)
	}
	_ = os.Remove(m.qmpPath)
	_ = os.Remove(m.tsPath)
	if st, err := os.Stat(m.console); err == nil {
		m.conStart = st.Size()
	} else {
		m.conStart = 0
	}
	args := m.Args()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	logf, err := os.OpenFile(filepath.Join(m.cfg.Dir, "qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("machine %s: %w", m.cfg.Name, err)
	}
	fmt.Fprintf(logf, "=== %s start #%d: %s\n", time.Now().UTC().Format(time.RFC3339), m.starts+1, ShellQuote(args))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		m.mu.Unlock()
		return fmt.Errorf("machine %s: start %s: %w", m.cfg.Name, args[0], err)
	}
	m.starts++
	m.cmd = cmd
	done := make(chan struct{})
	m.done = done
	m.waitErr = nil
	m.log.Info("qemu started", "pid", cmd.Process.Pid, "accel", m.cfg.Accel.Name, "cmdline", ShellQuote(args))
	go func() {
		err := cmd.Wait()
		logf.Close()
		m.mu.Lock()
		m.waitErr = err
		m.mu.Unlock()
		close(done)
		m.log.Info("qemu exited", "pid", cmd.Process.Pid, "err", err)
	}()
	m.mu.Unlock()
	m.shell.Reset()
	// Wait for the QMP socket: proves QEMU parsed its arguments and is running.
	for {
		if c, err := dialUnix(ctx, m.qmpPath); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("machine %s: qemu exited during start-up: %v (see %s)", m.cfg.Name, m.waitErr, filepath.Join(m.cfg.Dir, "qemu.log"))
		case <-ctx.Done():
			return fmt.Errorf("machine %s: waiting for QMP: %w", m.cfg.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *Machine) exitedLocked() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// Running tells whether the QEMU process is alive.
func (m *Machine) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil && !m.exitedLocked()
}

// PID is the QEMU process id (0 when never started).
func (m *Machine) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Wait waits until QEMU exits (or ctx ends) and returns its exit error.
func (m *Machine) Wait(ctx context.Context) error {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	if done == nil {
		return fmt.Errorf("machine %s: never started", m.cfg.Name)
	}
	select {
	case <-done:
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.waitErr
	case <-ctx.Done():
		return fmt.Errorf("machine %s: waiting for qemu to exit: %w", m.cfg.Name, ctx.Err())
	}
}

// QMP runs one QMP command and returns its "return" value as raw JSON.
func (m *Machine) QMP(ctx context.Context, command string, args any) ([]byte, error) {
	r, err := qmpCommand(ctx, m.qmpPath, command, args)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", m.cfg.Name, err)
	}
	return r, nil
}

// PowerOff is a hard power-off: QMP quit, QEMU exits at once (no guest shutdown).
// It falls back to SIGKILL when QMP does not answer.
func (m *Machine) PowerOff(ctx context.Context) error {
	if !m.Running() {
		return nil
	}
	if _, err := m.QMP(ctx, "quit", nil); err != nil && m.Running() {
		m.log.Warn("qmp quit failed, killing", "err", err)
		return m.Kill()
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := m.Wait(wctx); err != nil && errors.Is(err, context.DeadlineExceeded) {
		return m.Kill()
	}
	return nil
}

// Shutdown asks the guest to shut down cleanly (ACPI power button via QMP
// system_powerdown) and waits for QEMU to exit; when ctx ends first it kills QEMU
// and returns the context error.
func (m *Machine) Shutdown(ctx context.Context) error {
	if !m.Running() {
		return nil
	}
	if _, err := m.QMP(ctx, "system_powerdown", nil); err != nil {
		return err
	}
	if err := m.Wait(ctx); err != nil && ctx.Err() != nil {
		_ = m.Kill()
		return fmt.Errorf("machine %s: clean shutdown did not finish: %w", m.cfg.Name, ctx.Err())
	}
	return nil
}

// Reset is a hard reset (QMP system_reset), like pressing the reset button.
func (m *Machine) Reset(ctx context.Context) error {
	_, err := m.QMP(ctx, "system_reset", nil)
	if err == nil {
		m.markConsole()
	}
	return err
}

// Reboot asks the guest to reboot cleanly through the test shell (systemctl reboot)
// and returns without waiting; use WaitExecReady or WaitConsole afterwards.
func (m *Machine) Reboot(ctx context.Context) error {
	if err := m.shell.Send(ctx, "(sleep 1; systemctl reboot) >/dev/null 2>&1 </dev/null &"); err != nil {
		return fmt.Errorf("machine %s: reboot: %w", m.cfg.Name, err)
	}
	m.markConsole()
	return nil
}

func (m *Machine) markConsole() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st, err := os.Stat(m.console); err == nil {
		m.conStart = st.Size()
	}
}

// Kill sends SIGKILL to this machine's QEMU process (and only to it) and reaps it.
func (m *Machine) Kill() error {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("machine %s: kill pid %d: %w", m.cfg.Name, cmd.Process.Pid, err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("machine %s: pid %d did not exit after SIGKILL", m.cfg.Name, cmd.Process.Pid)
	}
	return nil
}

// Close kills QEMU if it still runs, closes the test shell, removes the socket
// directory and (unless Config.KeepDisk or EDGEPAIR_KEEP_DISKS=1) the overlay disk.
// The rest of the artifacts folder stays.
func (m *Machine) Close() error {
	err := m.Kill()
	m.shell.Close()
	_ = os.RemoveAll(m.sockDir)
	if err == nil && !m.cfg.KeepDisk && os.Getenv("EDGEPAIR_KEEP_DISKS") != "1" {
		_ = os.Remove(m.disk)
		_ = os.Remove(m.vars)
	}
	return err
}

// Exec runs cmd with /bin/sh as root in the guest through the test shell and returns
// its stdout and exit status. A non-zero exit status is not an error; errors mean the
// command could not be run or its result not read (ctx ended, guest gone).
func (m *Machine) Exec(ctx context.Context, cmd string) (string, int, error) {
	r, err := m.shell.Run(ctx, cmd)
	if err != nil {
		return "", -1, fmt.Errorf("machine %s: exec %q: %w", m.cfg.Name, cmd, err)
	}
	return string(r.Stdout), r.ExitCode, nil
}

// ExecOK runs cmd like Exec and returns an error (with stderr) when it exits non-zero.
func (m *Machine) ExecOK(ctx context.Context, cmd string) (string, error) {
	r, err := m.shell.Run(ctx, cmd)
	if err != nil {
		return "", fmt.Errorf("machine %s: exec %q: %w", m.cfg.Name, cmd, err)
	}
	if r.ExitCode != 0 {
		return string(r.Stdout), fmt.Errorf("machine %s: %q exited %d: %s", m.cfg.Name, cmd, r.ExitCode, strings.TrimSpace(string(r.Stderr)))
	}
	return string(r.Stdout), nil
}

// WaitExecReady waits until the test shell answers (the guest booted far enough for
// udev to start edgepair-testshell.service).
func (m *Machine) WaitExecReady(ctx context.Context) error {
	if err := m.shell.WaitReady(ctx); err != nil {
		return fmt.Errorf("machine %s: test shell not ready: %w [%s]", m.cfg.Name, err, m.PortStateNote())
	}
	return nil
}

func (m *Machine) dialTestShell(ctx context.Context) (io.ReadWriteCloser, error) {
	if !m.Running() {
		return nil, fmt.Errorf("machine %s is not running", m.cfg.Name)
	}
	return dialUnix(ctx, m.tsPath)
}

// SaveJournal writes `journalctl -b --no-pager` of the current boot to name in the
// machine folder and returns the path.
func (m *Machine) SaveJournal(ctx context.Context, name string) (string, error) {
	r, err := m.shell.Run(ctx, "journalctl -b --no-pager -o short-monotonic")
	if err != nil {
		return "", fmt.Errorf("machine %s: journal: %w", m.cfg.Name, err)
	}
	p := filepath.Join(m.cfg.Dir, name)
	if err := os.WriteFile(p, r.Stdout, 0o644); err != nil {
		return "", fmt.Errorf("machine %s: %w", m.cfg.Name, err)
	}
	return p, nil
}

// JournalExtract saves the current boot's journal as journal.txt in the machine folder.
func (m *Machine) JournalExtract(ctx context.Context) (string, error) {
	return m.SaveJournal(ctx, "journal.txt")
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// PortStateNote is TestShellPortState for an error message, "virtio port: …" (QMP
// gets its own short deadline: the caller's context has usually just ended).
func (m *Machine) PortStateNote() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.TestShellPortState(ctx)
	if err != nil {
		return "virtio port state unknown: " + err.Error()
	}
	return "virtio port: " + st
}

// TestShellPortState reports QEMU's view of the test shell's virtio-serial port, the
// "port N, guest on|off, host on|off, throttle on|off" line of `info qtree`: whether
// the guest has the port open, whether a host client is connected, and whether QEMU
// stopped forwarding the guest's output. It is what tells a guest that never opened
// the port apart from a stalled channel when the test shell stays silent.
func (m *Machine) TestShellPortState(ctx context.Context) (string, error) {
	raw, err := m.QMP(ctx, "human-monitor-command", map[string]string{"command-line": "info qtree"})
	if err != nil {
		return "", err
	}
	var tree string
	if err := json.Unmarshal(raw, &tree); err != nil {
		return "", fmt.Errorf("machine %s: info qtree: %w", m.cfg.Name, err)
	}
	return portState(tree, TestShellPort)
}

// portState finds the state line of the virtio-serial port named name in an
// `info qtree` dump.
func portState(tree, name string) (string, error) {
	lines := strings.Split(tree, "\n")
	for i, l := range lines {
		if !strings.Contains(l, `name = "`+name+`"`) {
			continue
		}
		for _, s := range lines[i+1 : min(i+4, len(lines))] {
			if s = strings.TrimSpace(s); strings.HasPrefix(s, "port ") && strings.Contains(s, "guest ") {
				return s, nil
			}
		}
		return "", fmt.Errorf("port %s: no state line after its name in info qtree", name)
	}
	return "", fmt.Errorf("port %s not found in info qtree", name)
}
