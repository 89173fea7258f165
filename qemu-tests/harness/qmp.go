package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
	QMP   any    `json:"QMP"`
}

// qmpCommand connects to a QMP socket, negotiates capabilities, runs one command and
// returns its "return" value. QMP allows one client at a time, so each command uses
// its own short connection.
func qmpCommand(ctx context.Context, path, command string, args any) ([]byte, error) {
	c, err := dialUnix(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	return qmpConverse(c, command, args)
}

func qmpConverse(c net.Conn, command string, args any) ([]byte, error) {
	r := bufio.NewReader(c)
	enc := json.NewEncoder(c)
	read := func() (qmpReply, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return qmpReply{}, err
			}
			var rep qmpReply
			if err := json.Unmarshal(line, &rep); err != nil {
				return qmpReply{}, fmt.Errorf("bad QMP message %q: %w", line, err)
			}
			if rep.Event != "" || rep.QMP != nil {
				continue
			}
			return rep, nil
		}
	}
	// The greeting is skipped by read (it has a "QMP" member) once we send.
	if err := enc.Encode(map[string]any{"execute": "qmp_capabilities"}); err != nil {
		return nil, fmt.Errorf("qmp_capabilities: %w", err)
	}
	if rep, err := read(); err != nil {
		return nil, fmt.Errorf("qmp_capabilities: %w", err)
	} else if rep.Error != nil {
		return nil, fmt.Errorf("qmp_capabilities: %s: %s", rep.Error.Class, rep.Error.Desc)
	}
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	if err := enc.Encode(msg); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	rep, err := read()
	if err != nil {
		if command == "quit" {
			return nil, nil // QEMU may close the socket before answering
		}
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	if rep.Error != nil {
		return nil, fmt.Errorf("qmp %s: %s: %s", command, rep.Error.Class, rep.Error.Desc)
	}
	return rep.Return, nil
}
