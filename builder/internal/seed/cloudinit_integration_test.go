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
