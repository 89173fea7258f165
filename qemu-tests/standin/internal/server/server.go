package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Paths are the files the stand-in keeps under the data dir.
type Paths struct {
	Bin         string // extracted kine and kube-apiserver
	SAKey       string
	SAPub       string
	TokenFile   string
	TLSCert     string
	TLSKey      string
	KineListen  string
	ReadyURL    string
	DataDirRoot string
}

// PathsFor returns the stand-in's file layout for cfg and a payload version key.
func PathsFor(cfg Config, payloadKey string) Paths {
	srv := filepath.Join(cfg.DataDir, "server")
	return Paths{
		Bin:         filepath.Join(cfg.DataDir, "data", payloadKey, "bin"),
		SAKey:       filepath.Join(srv, "tls", "service.key"),
		SAPub:       filepath.Join(srv, "tls", "service.pub"),
		TokenFile:   filepath.Join(srv, "token-auth.csv"),
		TLSCert:     filepath.Join(srv, "tls", "serving-kube-apiserver.crt"),
		TLSKey:      filepath.Join(srv, "tls", "serving-kube-apiserver.key"),
		KineListen:  "127.0.0.1:2379",
		ReadyURL:    "https://127.0.0.1:" + strconv.Itoa(cfg.HTTPSListenPort) + "/readyz",
		DataDirRoot: cfg.DataDir,
	}
}

// KineArgs are kine's arguments: PostgreSQL through the datastore endpoint, etcd API
// on localhost only.
func KineArgs(cfg Config, p Paths) []string {
	return []string{"--endpoint", cfg.DatastoreEndpoint, "--listen-address", p.KineListen}
}

// APIServerArgs are kube-apiserver's arguments.
func APIServerArgs(cfg Config, p Paths) []string {
	issuer := "https://kubernetes.default.svc." + cfg.ClusterDomain
	a := []string{
		"--etcd-servers=http://" + p.KineListen,
		"--storage-backend=etcd3",
		"--secure-port=" + strconv.Itoa(cfg.HTTPSListenPort),
		"--bind-address=" + cfg.BindAddress,
		"--tls-cert-file=" + p.TLSCert,
		"--tls-private-key-file=" + p.TLSKey,
		"--service-account-key-file=" + p.SAPub,
		"--service-account-signing-key-file=" + p.SAKey,
		"--service-account-issuer=" + issuer,
		"--api-audiences=" + issuer + ",k3s",
		"--service-cluster-ip-range=" + cfg.ServiceCIDR,
		"--token-auth-file=" + p.TokenFile,
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		"--profiling=false",
		"--enable-admission-plugins=NodeRestriction",
		"--cert-dir=" + filepath.Join(cfg.DataDir, "server", "tls", "temporary-certs"),
	}
	if cfg.AdvertiseAddress != "" {
		a = append(a, "--advertise-address="+cfg.AdvertiseAddress)
	}
	return a
}

// Run extracts the payload, prepares keys and certificates, runs kine and
// kube-apiserver, notifies systemd when the API is ready and supervises both: when
// one exits the other is stopped and Run returns an error (systemd restarts the
// unit). ctx ending stops both and returns nil.
func Run(ctx context.Context, cfg Config, payload fs.FS, log *slog.Logger) error {
	log = log.With("component", "k3s-standin")
	log.Info(Banner, "datastore", redact(cfg.DatastoreEndpoint), "node-ip", cfg.NodeIP, "tls-san", strings.Join(cfg.TLSSANs, ","))
	if len(cfg.Ignored) > 0 {
		log.Warn("k3s options the stand-in does not implement (ignored)", "keys", strings.Join(cfg.Ignored, ","))
	}
	key, err := PayloadKey(payload)
	if err != nil {
		return err
	}
	p := PathsFor(cfg, key)
	if err := Extract(payload, p.Bin); err != nil {
		return err
	}
	if err := Prepare(cfg, p); err != nil {
		return err
	}
	if err := writeKubeconfig(cfg); err != nil {
		log.Warn("kubeconfig not written", "err", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type exit struct {
		name string
		err  error
	}
	exits := make(chan exit, 2)
	start := func(name string, args []string) (*exec.Cmd, error) {
		cmd := exec.Command(filepath.Join(p.Bin, name), args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		log.Info("started", "process", name, "pid", cmd.Process.Pid)
		go func() { exits <- exit{name, cmd.Wait()} }()
		return cmd, nil
	}
	kine, err := start("kine", KineArgs(cfg, p))
	if err != nil {
		return err
	}
	procs := []*exec.Cmd{kine}
	stopAll := func() {
		for _, c := range procs {
			_ = c.Process.Signal(syscall.SIGTERM)
		}
		deadline := time.After(20 * time.Second)
		for range procs {
			select {
			case e := <-exits:
				log.Info("stopped", "process", e.name, "err", e.err)
			case <-deadline:
				for _, c := range procs {
					_ = c.Process.Kill()
				}
				return
			}
		}
	}
	if err := waitTCP(ctx, p.KineListen, exits); err != nil {
		stopAll()
		return fmt.Errorf("kine did not listen on %s: %w", p.KineListen, err)
	}
	api, err := start("kube-apiserver", APIServerArgs(cfg, p))
	if err != nil {
		stopAll()
		return err
	}
	procs = append(procs, api)
	go func() {
		if err := waitReady(ctx, p.ReadyURL); err != nil {
			return
		}
		log.Info("kube-apiserver ready", "url", p.ReadyURL)
		if err := sdNotify("READY=1\nSTATUS=" + Banner + ": API ready"); err != nil {
			log.Warn("sd_notify", "err", err)
		}
	}()
	select {
	case <-ctx.Done():
		log.Info("stopping")
		stopAll()
		return nil
	case e := <-exits:
		// One process exited: stop the other so systemd restarts both together.
		procs = without(procs, e.name)
		stopAll()
		return fmt.Errorf("%s exited: %v", e.name, e.err)
	}
}

func without(cmds []*exec.Cmd, name string) []*exec.Cmd {
	var out []*exec.Cmd
	for _, c := range cmds {
		if filepath.Base(c.Path) != name {
			out = append(out, c)
		}
	}
	return out
}

func waitTCP[T any](ctx context.Context, addr string, exits <-chan T) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if len(exits) > 0 {
			return errors.New("process exited")
		}
	}
}

func waitReady(ctx context.Context, url string) error {
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // local readiness probe of our own server
	for {
		resp, err := cl.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// sdNotify sends a state string to systemd when NOTIFY_SOCKET is set.
func sdNotify(state string) error {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil
	}
	if strings.HasPrefix(sock, "@") {
		sock = "\x00" + sock[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// PayloadKey identifies the embedded binaries (their VERSIONS file and sizes), so a
// new stand-in extracts into a new directory and an unchanged one reuses the old.
func PayloadKey(payload fs.FS) (string, error) {
	h := sha256.New()
	for _, n := range []string{"VERSIONS", "kine", "kube-apiserver"} {
		st, err := fs.Stat(payload, n)
		if err != nil {
			return "", fmt.Errorf("stand-in payload lacks %s (build it with qemu-tests/standin/build.sh): %w", n, err)
		}
		fmt.Fprintf(h, "%s %d\n", n, st.Size())
	}
	v, err := fs.ReadFile(payload, "VERSIONS")
	if err != nil {
		return "", err
	}
	h.Write(v)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Extract writes kine and kube-apiserver into dir (mode 0755) unless they are there
// with the right size; each file is written to a temporary name and renamed.
func Extract(payload fs.FS, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("extract: %w", err)
	}
	for _, n := range []string{"kine", "kube-apiserver"} {
		src, err := payload.Open(n)
		if err != nil {
			return fmt.Errorf("extract %s: %w", n, err)
		}
		st, err := src.Stat()
		if err != nil {
			src.Close()
			return err
		}
		dst := filepath.Join(dir, n)
		if have, err := os.Stat(dst); err == nil && have.Size() == st.Size() {
			src.Close()
			continue
		}
		tmp, err := os.CreateTemp(dir, "."+n+"-*")
		if err != nil {
			src.Close()
			return fmt.Errorf("extract %s: %w", n, err)
		}
		_, err = io.Copy(tmp, src)
		src.Close()
		if err == nil {
			err = tmp.Chmod(0o755)
		}
		if err == nil {
			err = tmp.Sync()
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), dst)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return fmt.Errorf("extract %s: %w", n, err)
		}
	}
	return nil
}

// Prepare creates, when missing, the service-account key pair, and (always, since
// the token or the names may have changed) the token-auth file and the serving
// certificate. Secrets are generated with crypto/rand and written 0600.
func Prepare(cfg Config, p Paths) error {
	if err := os.MkdirAll(filepath.Dir(p.SAKey), 0o700); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if _, err := os.Stat(p.SAKey); errors.Is(err, os.ErrNotExist) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return fmt.Errorf("service-account key: %w", err)
		}
		pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return err
		}
		if err := writePEM(p.SAKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k)); err != nil {
			return err
		}
		if err := writePEM(p.SAPub, "PUBLIC KEY", pub); err != nil {
			return err
		}
	}
	// token,user,uid,"group1,group2": the cluster token authenticates the admin.
	tok := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", cfg.Token)
	if err := writeFileAtomic(p.TokenFile, []byte(tok), 0o600); err != nil {
		return err
	}
	return writeServingCert(cfg, p)
}

// SANs are the names and addresses of the serving certificate.
func SANs(cfg Config) (dns []string, ips []net.IP) {
	seen := map[string]bool{}
	add := func(s string) {
		if s == "" || seen[s] {
			return
		}
		seen[s] = true
		if a, err := netip.ParseAddr(s); err == nil {
			ips = append(ips, net.IP(a.AsSlice()))
		} else {
			dns = append(dns, s)
		}
	}
	for _, s := range []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + cfg.ClusterDomain, "127.0.0.1", "::1", cfg.NodeIP, cfg.AdvertiseAddress, cfg.NodeName} {
		add(s)
	}
	if pfx, err := netip.ParsePrefix(cfg.ServiceCIDR); err == nil {
		add(pfx.Masked().Addr().Next().String()) // the "kubernetes" service IP
	}
	for _, s := range cfg.TLSSANs {
		add(s)
	}
	return dns, ips
}

func writeServingCert(cfg Config, p Paths) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return err
	}
	dns, ips := SANs(cfg)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "kube-apiserver (" + Banner + ")"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(p.TLSKey, "EC PRIVATE KEY", kder); err != nil {
		return err
	}
	return writePEM(p.TLSCert, "CERTIFICATE", der)
}

func writeKubeconfig(cfg Config) error {
	if cfg.WriteKubeconfig == "" {
		return nil
	}
	kc := fmt.Sprintf(`# %s
apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: https://127.0.0.1:%d
    insecure-skip-tls-verify: true
users:
- name: default
  user:
    token: %s
contexts:
- name: default
  context: {cluster: default, user: default}
current-context: default
`, Banner, cfg.HTTPSListenPort, cfg.Token)
	if err := os.MkdirAll(filepath.Dir(cfg.WriteKubeconfig), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(cfg.WriteKubeconfig, []byte(kc), 0o600)
}

func writePEM(path, typ string, der []byte) error {
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// redact hides the password of a datastore URL for logs.
func redact(endpoint string) string {
	at := strings.LastIndex(endpoint, "@")
	scheme := strings.Index(endpoint, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return endpoint
	}
	userinfo := endpoint[scheme+3 : at]
	if u, _, ok := strings.Cut(userinfo, ":"); ok {
		return endpoint[:scheme+3] + u + ":REDACTED" + endpoint[at:]
	}
	return endpoint
}
