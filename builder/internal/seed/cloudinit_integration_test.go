//go:build integration

package seed

// These tests check the rendered seeds with the real cloud-init (Debian's
// cloud-init 22.4 package, as in the image): its schema validator for
// user-data, and its own network-config parser and networkd renderer for
// network-config (22.4's `cloud-init schema` validates cloud-config only).
// Each check is first shown to fail on a broken input, so a checker that
// accepts everything cannot pass.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// cloudInitPython is the interpreter cloud-init runs with (its shebang),
// so the cloudinit modules import even when another python3 is first in
// PATH.
func cloudInitPython(t *testing.T) (cloudInit, python string) {
	t.Helper()
	ci, err := exec.LookPath("cloud-init")
	if err != nil {
		t.Skipf("cloud-init not installed (make deps installs it): %v", err)
	}
	data, err := os.ReadFile(ci)
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	py := strings.TrimSpace(strings.TrimPrefix(line, "#!"))
	if !strings.HasPrefix(line, "#!") || py == "" {
		t.Fatalf("%s has no shebang", ci)
	}
	return ci, strings.Fields(py)[0]
}

func schemaCheck(t *testing.T, ci, path string) (string, error) {
	out, err := exec.Command(ci, "schema", "--config-file", path).CombinedOutput()
	return string(out), err
}

func TestCloudInitSchemaUserData(t *testing.T) {
	ci, _ := cloudInitPython(t)
	dir := t.TempDir()

	bad := filepath.Join(dir, "bad-user-data")
	if err := os.WriteFile(bad, []byte("#cloud-config\nusers: 5\nssh_pwauth: maybe-not\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := schemaCheck(t, ci, bad); err == nil {
		t.Fatalf("cloud-init schema accepted a broken user-data, so it cannot check ours:\n%s", out)
	}

	for _, pf := range []string{"pair.yaml", "pair-full.yaml"} {
		seeds, err := Render(fixedRecord(t, pf))
		if err != nil {
			t.Fatal(err)
		}
		for _, ns := range seeds {
			p := filepath.Join(dir, pf+"-"+ns.Node+"-user-data")
			if err := os.WriteFile(p, ns.UserData, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := schemaCheck(t, ci, p)
			if err != nil || !strings.Contains(out, "Valid cloud-config") || strings.Contains(out, "DEPRECATED") {
				t.Errorf("%s %s: cloud-init schema: %v\n%s", pf, ns.Node, err, out)
			}
		}
	}
}

// netScript parses a network config with cloud-init's network_state (no
// skipping of broken entries) and renders it with its networkd renderer;
// it prints {interface: .network file}. With a second argument "vmware" it
// reads guestinfo metadata (gzip+base64) through the VMware datasource's
// own decode and process_metadata first.
const netScript = `
import sys, json, yaml
from cloudinit.net import network_state, networkd
if len(sys.argv) > 2 and sys.argv[2] == "vmware":
    from cloudinit.sources import DataSourceVMware as vm
    raw = open(sys.argv[1]).read().strip()
    md = vm.process_metadata(vm.load_json_or_yaml(vm.decode("metadata", "gzip+base64", raw)))
    cfg = md["network"]["config"]
    print(json.dumps({"instance-id": md["instance-id"], "local-hostname": md["local-hostname"]}))
else:
    cfg = yaml.safe_load(open(sys.argv[1]))
ns = network_state.parse_net_config_data(cfg, skip_broken=False)
print(json.dumps(networkd.network_state_to_networkd(ns)))
`

func renderNet(t *testing.T, py, path string, extra ...string) ([]string, error) {
	args := append([]string{"-c", netScript, path}, extra...)
	out, err := exec.Command(py, args...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%v:\n%s", err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n"), nil
}

func TestCloudInitNetworkConfig(t *testing.T) {
	_, py := cloudInitPython(t)
	dir := t.TempDir()

	bad := filepath.Join(dir, "bad-network-config")
	if err := os.WriteFile(bad, []byte("version: 2\nethernets:\n  eth0:\n    addresses: [not-an-address]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := renderNet(t, py, bad); err == nil {
		t.Fatal("cloud-init's parser accepted a broken network-config, so it cannot check ours")
	}

	r := fixedRecord(t, "pair-full.yaml")
	seeds, err := Render(r)
	if err != nil {
		t.Fatal(err)
	}
	for i, ns := range seeds {
		n := r.Spec.Nodes[i]
		p := filepath.Join(dir, ns.Node+"-network-config")
		if err := os.WriteFile(p, ns.NetworkConfig, 0o600); err != nil {
			t.Fatal(err)
		}
		lines, err := renderNet(t, py, p)
		if err != nil {
			t.Fatalf("%s: cloud-init rejected network-config: %s", ns.Node, err)
		}
		checkNetworkd(t, ns.Node, lines[len(lines)-1], n, r.Spec)

		// The same through the VMware datasource's guestinfo.metadata.
		var md string
		for _, kv := range ns.GuestInfo {
			if kv.Key == "guestinfo.metadata" {
				md = kv.Value
			}
		}
		gp := filepath.Join(dir, ns.Node+"-guestinfo.metadata")
		if err := os.WriteFile(gp, []byte(md), 0o600); err != nil {
			t.Fatal(err)
		}
		lines, err = renderNet(t, py, gp, "vmware")
		if err != nil {
			t.Fatalf("%s: VMware datasource rejected guestinfo.metadata: %s", ns.Node, err)
		}
		var meta map[string]string
		if err := json.Unmarshal([]byte(lines[0]), &meta); err != nil {
			t.Fatal(err)
		}
		if meta["instance-id"] != InstanceID(r.Spec.Pair, n.Name, ns.Config) || meta["local-hostname"] != fqdn(r, i) {
			t.Errorf("%s: guestinfo metadata %v", ns.Node, meta)
		}
		checkNetworkd(t, ns.Node+" (guestinfo)", lines[len(lines)-1], n, r.Spec)
	}
}

// checkNetworkd checks cloud-init's rendered .network files for the node.
func checkNetworkd(t *testing.T, what, jsonOut string, n SpecNode, s Spec) {
	t.Helper()
	var files map[string]string
	if err := json.Unmarshal([]byte(jsonOut), &files); err != nil {
		t.Fatalf("%s: %v: %s", what, err, jsonOut)
	}
	lan := files[n.Interface]
	want := []string{"Address=" + n.Address, "Gateway=" + s.Gateway, "Name=" + n.Interface, "DHCP=no"}
	for _, d := range s.DNS {
		want = append(want, d)
	}
	if n.MAC != "" {
		want = append(want, "MACAddress="+n.MAC)
	}
	for _, w := range want {
		if !strings.Contains(lan, w) {
			t.Errorf("%s: networkd file for %s lacks %q:\n%s", what, n.Interface, w, lan)
		}
	}
	if n.Link != "" {
		if l := files[n.LinkInterface]; !strings.Contains(l, "Address="+n.Link) {
			t.Errorf("%s: networkd file for the link %s lacks Address=%s:\n%s", what, n.LinkInterface, n.Link, l)
		}
	}
}

// overlayCloud is the image's cloud-init configuration in this repository.
const overlayCloud = "../../../overlays/base/etc/cloud"

// TestImageCloudConfig merges the image's cloud.cfg.d with Debian's
// cloud.cfg (and a 90_dpkg.cfg as the package writes it) through
// cloud-init's own reader, and checks the result: only NoCloud and VMware,
// the networkd renderer, no growpart/resizefs/apt modules, and every
// module name resolving to a real cloud-init module.
func TestImageCloudConfig(t *testing.T) {
	_, py := cloudInitPython(t)
	if _, err := os.Stat("/etc/cloud/cloud.cfg"); err != nil {
		t.Skipf("Debian's /etc/cloud/cloud.cfg is missing: %v", err)
	}
	root := fakeCloudEtc(t)
	script := `
import sys, json, importlib.util
from cloudinit import util
from cloudinit.config.modules import Modules
from cloudinit import importer
cfg = util.read_conf_with_confd(sys.argv[1])
bad = []
for stage in ("cloud_init_modules", "cloud_config_modules", "cloud_final_modules"):
    for name in cfg[stage]:
        mod = "cc_" + name.replace("-", "_")
        found, _ = importer.find_module(mod, ["", "cloudinit.config"], ["handle"])
        if not found:
            bad.append(name)
print(json.dumps({"cfg": cfg, "unknown_modules": bad}, default=str))
`
	out, err := exec.Command(py, "-c", script, filepath.Join(root, "etc/cloud/cloud.cfg")).CombinedOutput()
	if err != nil {
		t.Fatalf("cloud-init could not read the configuration: %v\n%s", err, out)
	}
	var res struct {
		Cfg struct {
			DatasourceList []string `json:"datasource_list"`
			SystemInfo     struct {
				Distro  string `json:"distro"`
				Network struct {
					Renderers []string `json:"renderers"`
				} `json:"network"`
			} `json:"system_info"`
			Init   []string `json:"cloud_init_modules"`
			Config []string `json:"cloud_config_modules"`
			Final  []string `json:"cloud_final_modules"`
		} `json:"cfg"`
		Unknown []string `json:"unknown_modules"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := strings.Join(res.Cfg.DatasourceList, ","); got != "NoCloud,VMware,None" {
		t.Errorf("datasource_list %s, want NoCloud,VMware,None", got)
	}
	if res.Cfg.SystemInfo.Distro != "debian" {
		t.Errorf("system_info.distro %q: our system_info replaced Debian's instead of merging", res.Cfg.SystemInfo.Distro)
	}
	if got := strings.Join(res.Cfg.SystemInfo.Network.Renderers, ","); got != "networkd" {
		t.Errorf("network renderers %s, want networkd", got)
	}
	if len(res.Unknown) > 0 {
		t.Errorf("modules cloud-init does not have: %v", res.Unknown)
	}
	all := strings.Join(append(append(res.Cfg.Init, res.Cfg.Config...), res.Cfg.Final...), " ")
	for _, m := range []string{"growpart", "resizefs", "mounts", "apt-configure", "package-update-upgrade-install", "ntp", "phone-home"} {
		if strings.Contains(" "+all+" ", " "+m+" ") {
			t.Errorf("module %s is enabled", m)
		}
	}
	for _, m := range []string{"write-files", "users-groups", "ssh", "set_hostname", "set-passwords"} {
		if !strings.Contains(" "+all+" ", " "+m+" ") {
			t.Errorf("module %s is missing", m)
		}
	}
}

// fakeCloudEtc lays out <root>/etc/cloud as in the image: Debian's
// cloud.cfg, the package's 90_dpkg.cfg (full datasource list) and our
// overlay files.
func fakeCloudEtc(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	etc := filepath.Join(root, "etc/cloud")
	if err := os.MkdirAll(filepath.Join(etc, "cloud.cfg.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, "/etc/cloud/cloud.cfg", filepath.Join(etc, "cloud.cfg"))
	if err := os.WriteFile(filepath.Join(etc, "cloud.cfg.d/90_dpkg.cfg"),
		[]byte("datasource_list: [ NoCloud, ConfigDrive, OpenStack, Ec2, VMware, None ]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(overlayCloud, "cloud.cfg.d/99_edgepair.cfg"), filepath.Join(etc, "cloud.cfg.d/99_edgepair.cfg"))
	copyFile(t, filepath.Join(overlayCloud, "ds-identify.cfg"), filepath.Join(etc, "ds-identify.cfg"))
	return root
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDSIdentify runs cloud-init's real ds-identify (the systemd generator
// that decides whether cloud-init runs at all) against the image's
// configuration in a fake root, on a QEMU-like machine: with no seed it
// must disable cloud-init (no waiting on anything), with our ISO or FAT
// seed (seen through the real blkid) it must pick NoCloud and nothing else.
func TestDSIdentify(t *testing.T) {
	const dsIdentify = "/usr/lib/cloud-init/ds-identify"
	if _, err := os.Stat(dsIdentify); err != nil {
		t.Skipf("cloud-init's ds-identify is missing: %v", err)
	}
	needTools(t, "blkid")
	seeds, err := Render(fixedRecord(t, "pair.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	imgs := t.TempDir()
	iso, fat := filepath.Join(imgs, "seed.iso"), filepath.Join(imgs, "seed.img")
	if err := WriteISO(iso, seeds[0], created); err != nil {
		t.Fatal(err)
	}
	if err := WriteFAT(fat, seeds[0], created); err != nil {
		t.Fatal(err)
	}
	blkid, err := exec.LookPath("blkid")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, image, dev string
		wantRC           int
		wantList         string
	}{
		{"no seed", "", "", 1, "datasource_list: [  ]"},
		{"iso seed", iso, "/dev/sr0", 0, "datasource_list: [ NoCloud, None ]"},
		{"fat seed", fat, "/dev/sdb", 0, "datasource_list: [ NoCloud, None ]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeCloudEtc(t)
			for dir, files := range map[string]map[string]string{
				"sys/class/dmi/id": {"sys_vendor": "QEMU\n", "product_name": "Standard PC (Q35 + ICH9, 2009)\n"},
				"proc":             {"cmdline": "console=ttyS0 quiet\n", "uptime": "5.0 5.0\n"},
				"proc/1":           {"cmdline": "/sbin/init\x00", "environ": ""},
				"run":              {},
				"bin":              {"systemd-detect-virt": "#!/bin/sh\necho kvm\n"},
			} {
				if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
					t.Fatal(err)
				}
				for name, content := range files {
					if err := os.WriteFile(filepath.Join(root, dir, name), []byte(content), 0o755); err != nil {
						t.Fatal(err)
					}
				}
			}
			// ds-identify lists filesystems with `blkid -c /dev/null -o
			// export`; the wrapper answers with the real blkid's probe
			// of the seed image, as if it were attached as tc.dev.
			script := "#!/bin/sh\nexit 2\n"
			if tc.image != "" {
				script = fmt.Sprintf("#!/bin/sh\n%s -p -o export %s | sed 's|^DEVNAME=.*|DEVNAME=%s|'\n", blkid, tc.image, tc.dev)
			}
			if err := os.WriteFile(filepath.Join(root, "bin/blkid"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(dsIdentify, "--force")
			cmd.Env = append(os.Environ(), "PATH="+filepath.Join(root, "bin")+":"+os.Getenv("PATH"), "PATH_ROOT="+root)
			out, err := cmd.CombinedOutput()
			rc := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				rc = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			result, _ := os.ReadFile(filepath.Join(root, "run/cloud-init/cloud.cfg"))
			log, _ := os.ReadFile(filepath.Join(root, "run/cloud-init/ds-identify.log"))
			if rc != tc.wantRC || !strings.Contains(string(result), tc.wantList) {
				t.Errorf("ds-identify: rc %d (want %d), result %q (want %q)\n%s\n%s", rc, tc.wantRC, result, tc.wantList, out, log)
			}
		})
	}
}
