package harness

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Result is what one command run through the test shell produced.
type Result struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
}

// DefaultRemoteDir is where the guest side keeps each command's script and output
// (/run is a tmpfs on every systemd machine, also with a read-only root).
const DefaultRemoteDir = "/run/edgepair-testshell"

// Shell talks to a root /bin/sh in the guest that reads command lines from, and writes
// to, one byte stream (the virtio-serial port org.edgepair.testshell). Each command is
// sent base64-encoded on one line; the guest runs it with stdin from /dev/null and
// answers with unique begin/end markers around the base64 of its stdout and stderr and
// its exit status, so stray output on the port (a restarted shell, output of a
// command whose caller gave up) can never be mistaken for a result. A broken or timed
// out connection is dropped and dialled again on the next command, which is how the
// shell survives guest reboots and QEMU restarts.
type Shell struct {
	// RemoteDir is the guest directory for command files (default DefaultRemoteDir).
	RemoteDir string

	dial   func(context.Context) (io.ReadWriteCloser, error)
	prefix string

	mu   sync.Mutex
	conn io.ReadWriteCloser
	r    *bufio.Reader
	seq  uint64
}

// NewShell returns a shell client that reaches the guest through dial.
func NewShell(dial func(context.Context) (io.ReadWriteCloser, error)) *Shell {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &Shell{RemoteDir: DefaultRemoteDir, dial: dial, prefix: hex.EncodeToString(b[:])}
}

// Reset drops the current connection; the next command dials again.
func (s *Shell) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLocked()
}

// Close drops the connection.
func (s *Shell) Close() { s.Reset() }

func (s *Shell) dropLocked() {
	if s.conn != nil {
		_ = s.conn.Close()
	}
	s.conn, s.r = nil, nil
}

func (s *Shell) connectLocked(ctx context.Context) error {
	if s.conn != nil {
		return nil
	}
	c, err := s.dial(ctx)
	if err != nil {
		return fmt.Errorf("connect to test shell: %w", err)
	}
	s.conn, s.r = c, bufio.NewReaderSize(c, 64<<10)
	return nil
}

// Send writes one raw command line without waiting for any answer (for commands
// that end the shell, such as a reboot).
func (s *Shell) Send(ctx context.Context, line string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.connectLocked(ctx); err != nil {
		return err
	}
	if _, err := io.WriteString(s.conn, line+"\n"); err != nil {
		s.dropLocked()
		return fmt.Errorf("send to test shell: %w", err)
	}
	return nil
}

// commandLine builds the guest line that runs script and frames its result.
func (s *Shell) commandLine(id, script string, timeout time.Duration) string {
	b64 := base64.StdEncoding.EncodeToString([]byte(script))
	run := `/bin/sh "$ep_d/c"`
	if timeout > 0 {
		secs := int(math.Ceil(timeout.Seconds()))
		run = "timeout -s KILL " + strconv.Itoa(secs) + " " + run
	}
	return fmt.Sprintf(`ep_d='%s/%s'; mkdir -p "$ep_d" && printf %%s '%s' | base64 -d >"$ep_d/c" && %s >"$ep_d/o" 2>"$ep_d/e" </dev/null; ep_x=$?; `+
		`printf '\n@@EP-BEGIN %s@@\n'; base64 -w0 "$ep_d/o"; printf '\n@@EP-MID %s@@\n'; base64 -w0 "$ep_d/e"; rm -rf "$ep_d"; printf '\n@@EP-END %s %%d@@\n' "$ep_x"`,
		s.RemoteDir, id, b64, run, id, id, id)
}

// Run runs script with /bin/sh in the guest. The guest kills the command when ctx's
// deadline passes; when ctx ends the connection is dropped and an error returned.
func (s *Shell) Run(ctx context.Context, script string) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if err := s.connectLocked(ctx); err != nil {
		return Result{}, err
	}
	s.seq++
	id := s.prefix + "-" + strconv.FormatUint(s.seq, 10)
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return Result{}, context.DeadlineExceeded
		}
	}
	conn := s.conn
	var ctxEnded bool
	var cmu sync.Mutex
	stop := context.AfterFunc(ctx, func() {
		cmu.Lock()
		ctxEnded = true
		cmu.Unlock()
		_ = conn.Close()
	})
	res, err := s.exchangeLocked(id, s.commandLine(id, script, timeout))
	stopped := stop()
	if err != nil {
		s.dropLocked()
		cmu.Lock()
		ended := ctxEnded
		cmu.Unlock()
		if ended || !stopped {
			return Result{}, fmt.Errorf("test shell: %w (%v)", ctx.Err(), err)
		}
		return Result{}, fmt.Errorf("test shell: %w", err)
	}
	return res, nil
}

func (s *Shell) exchangeLocked(id, line string) (Result, error) {
	if _, err := io.WriteString(s.conn, line+"\n"); err != nil {
		return Result{}, fmt.Errorf("write: %w", err)
	}
	begin := "@@EP-BEGIN " + id + "@@"
	mid := "@@EP-MID " + id + "@@"
	endPrefix := "@@EP-END " + id + " "
	const (
		waiting = iota
		inStdout
		inStderr
	)
	state := waiting
	var out, errOut strings.Builder
	for {
		l, err := s.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return Result{}, fmt.Errorf("read: connection closed by the guest side: %w", err)
			}
			return Result{}, fmt.Errorf("read: %w", err)
		}
		l = strings.TrimRight(l, "\r\n")
		switch {
		case l == begin:
			state = inStdout
			out.Reset()
			errOut.Reset()
		case state == inStdout && l == mid:
			state = inStderr
		case state == inStderr && strings.HasPrefix(l, endPrefix) && strings.HasSuffix(l, "@@"):
			code, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(l, endPrefix), "@@"))
			if err != nil {
				return Result{}, fmt.Errorf("bad end marker %q: %w", l, err)
			}
			so, err := base64.StdEncoding.DecodeString(out.String())
			if err != nil {
				return Result{}, fmt.Errorf("decode stdout: %w", err)
			}
			se, err := base64.StdEncoding.DecodeString(errOut.String())
			if err != nil {
				return Result{}, fmt.Errorf("decode stderr: %w", err)
			}
			return Result{Stdout: so, Stderr: se, ExitCode: code}, nil
		case state == inStdout:
			out.WriteString(l)
		case state == inStderr:
			errOut.WriteString(l)
		}
	}
}

// WaitReady waits until the guest shell runs a command, probing every few seconds.
func (s *Shell) WaitReady(ctx context.Context) error {
	var last error
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := s.Run(pctx, "true")
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-time.After(time.Second):
		}
	}
}
