// Package services starts and stops the processes the agent drives:
// PostgreSQL, keepalived and k3s. Two implementations: systemd units over
// D-Bus (the nodes) and child processes (network-namespace tests, where no
// systemd runs).
package services

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/dbus"
)

// Unit is one service the agent controls.
type Unit interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	Restart(ctx context.Context) error
	// Kill ends the service at once (SIGQUIT to the main process: for
	// PostgreSQL an immediate shutdown) and waits until it is stopped.
	Kill(ctx context.Context) error
}

// Systemd controls units through systemd's D-Bus API.
type Systemd struct{ conn *dbus.Conn }

// NewSystemd connects to the system bus.
func NewSystemd(ctx context.Context) (*Systemd, error) {
	c, err := dbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd: %w", err)
	}
	return &Systemd{conn: c}, nil
}

// Close closes the bus connection.
func (s *Systemd) Close() { s.conn.Close() }

// Unit returns a handle for the named unit.
func (s *Systemd) Unit(name string) Unit { return &systemdUnit{s: s, name: name} }

type systemdUnit struct {
	s    *Systemd
	name string
}

func (u *systemdUnit) job(ctx context.Context, what string, f func(chan<- string) (int, error)) error {
	ch := make(chan string, 1)
	if _, err := f(ch); err != nil {
		return fmt.Errorf("%s %s: %w", what, u.name, err)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return fmt.Errorf("%s %s: job %s", what, u.name, res)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: %w", what, u.name, ctx.Err())
	}
}

func (u *systemdUnit) Start(ctx context.Context) error {
	return u.job(ctx, "start", func(ch chan<- string) (int, error) { return u.s.conn.StartUnitContext(ctx, u.name, "replace", ch) })
}

func (u *systemdUnit) Stop(ctx context.Context) error {
	return u.job(ctx, "stop", func(ch chan<- string) (int, error) { return u.s.conn.StopUnitContext(ctx, u.name, "replace", ch) })
}

func (u *systemdUnit) Kill(ctx context.Context) error {
	if err := u.s.conn.KillUnitWithTarget(ctx, u.name, dbus.Main, int32(syscall.SIGQUIT)); err != nil {
		return fmt.Errorf("kill %s: %w", u.name, err)
	}
	return u.Stop(ctx)
}

func (u *systemdUnit) Restart(ctx context.Context) error {
	return u.job(ctx, "restart", func(ch chan<- string) (int, error) { return u.s.conn.RestartUnitContext(ctx, u.name, "replace", ch) })
}

// runAs prefixes a command with runuser when root runs it for another user.
func runAs(ctx context.Context, osUser, bin string, args ...string) *exec.Cmd {
	if os.Geteuid() == 0 && osUser != "" && osUser != "root" {
		return exec.CommandContext(ctx, "runuser", append([]string{"-u", osUser, "--", bin}, args...)...)
	}
	return exec.CommandContext(ctx, bin, args...)
}

// PgCtl runs PostgreSQL with pg_ctl (exec mode).
type PgCtl struct {
	Bin     string // PostgreSQL bin directory
	PGData  string
	LogFile string
	OSUser  string
}

func (p *PgCtl) run(ctx context.Context, args ...string) (int, string, error) {
	cmd := runAs(ctx, p.OSUser, filepath.Join(p.Bin, "pg_ctl"), append([]string{"-D", p.PGData}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// pg_ctl start leaves the postmaster running: detach it from our
	// process group so signals to the agent do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), nil
	}
	return 0, out.String(), err
}

// Running reports whether pg_ctl sees a live postmaster.
func (p *PgCtl) Running(ctx context.Context) (bool, error) {
	code, out, err := p.run(ctx, "status")
	if err != nil {
		return false, err
	}
	switch code {
	case 0:
		return true, nil
	case 3, 4: // not running / no data directory
		return false, nil
	}
	return false, fmt.Errorf("pg_ctl status: exit %d: %s", code, strings.TrimSpace(out))
}

// Start starts PostgreSQL unless it already runs, and waits for it.
func (p *PgCtl) Start(ctx context.Context) error {
	if ok, err := p.Running(ctx); err == nil && ok {
		return nil
	}
	code, out, err := p.run(ctx, "-l", p.LogFile, "-w", "-t", "60", "start")
	if err != nil {
		return fmt.Errorf("pg_ctl start: %w", err)
	}
	if code != 0 {
		return fmt.Errorf("pg_ctl start: exit %d: %s", code, strings.TrimSpace(out))
	}
	return nil
}

// Stop does a fast shutdown; no error when it is not running.
func (p *PgCtl) Stop(ctx context.Context) error {
	if ok, err := p.Running(ctx); err == nil && !ok {
		return nil
	}
	code, out, err := p.run(ctx, "-m", "fast", "-w", "-t", "60", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w", err)
	}
	if code != 0 {
		if ok, err := p.Running(ctx); err == nil && !ok {
			return nil
		}
		return fmt.Errorf("pg_ctl stop: exit %d: %s", code, strings.TrimSpace(out))
	}
	return nil
}

// Kill does an immediate shutdown.
func (p *PgCtl) Kill(ctx context.Context) error {
	if ok, err := p.Running(ctx); err == nil && !ok {
		return nil
	}
	code, out, err := p.run(ctx, "-m", "immediate", "-w", "-t", "30", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop -m immediate: %w", err)
	}
	if code != 0 {
		if ok, err := p.Running(ctx); err == nil && !ok {
			return nil
		}
		return fmt.Errorf("pg_ctl stop -m immediate: exit %d: %s", code, strings.TrimSpace(out))
	}
	return nil
}

// Restart stops and starts.
func (p *PgCtl) Restart(ctx context.Context) error {
	if err := p.Stop(ctx); err != nil {
		return err
	}
	return p.Start(ctx)
}

// Daemon runs a long-lived program as a detached child (exec mode), tracked
// by a pid file so a restarted agent adopts it instead of starting another.
type Daemon struct {
	Name    string
	Bin     string
	Args    []string
	PIDFile string // written by the agent
	LogFile string
}

// PID returns the pid of the running daemon, or 0.
func (d *Daemon) PID() int {
	b, err := os.ReadFile(d.PIDFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if syscall.Kill(pid, 0) != nil {
		return 0
	}
	// make sure the pid was not reused by something else
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || filepath.Base(exe) != filepath.Base(d.Bin) {
		return 0
	}
	return pid
}

// Start launches the daemon unless it runs.
func (d *Daemon) Start(ctx context.Context) error {
	if d.PID() != 0 {
		return nil
	}
	log, err := os.OpenFile(d.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("%s log: %w", d.Name, err)
	}
	defer log.Close()
	cmd := exec.Command(d.Bin, d.Args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", d.Name, err)
	}
	go func() { _ = cmd.Wait() }() // reap it if it exits while we run
	if err := os.WriteFile(d.PIDFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("%s pid file: %w", d.Name, err)
	}
	return nil
}

// Stop sends SIGTERM and waits up to 10 s.
func (d *Daemon) Stop(ctx context.Context) error {
	pid := d.PID()
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop %s: %w", d.Name, err)
	}
	for i := 0; i < 100; i++ {
		if d.PID() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("stop %s: pid %d still running after 10s", d.Name, pid)
}

// Kill sends SIGKILL.
func (d *Daemon) Kill(ctx context.Context) error {
	if pid := d.PID(); pid != 0 {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill %s: %w", d.Name, err)
		}
	}
	return nil
}

// Restart stops and starts.
func (d *Daemon) Restart(ctx context.Context) error {
	if err := d.Stop(ctx); err != nil {
		return err
	}
	return d.Start(ctx)
}
