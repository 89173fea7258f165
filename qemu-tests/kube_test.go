//go:build qemu

package qemutests

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/edgepair/edgepair/qemu-tests/netlab"
)

// kube is a minimal Kubernetes API client (plain HTTPS with the cluster token as
// bearer token), connecting from the client namespace. kubectl is not available
// here; the requests are the ones kubectl create/scale/get make.
type kube struct {
	host  string // address of the API server (the VIP or a node)
	token string
	hc    *http.Client
}

func (e *pairEnv) kube(host string) *kube {
	return &kube{host: host, token: e.token, hc: &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			DialContext:       netlab.Dialer(e.client),
			DisableKeepAlives: true,
			// The stand-in's serving certificate is self-signed (it covers the VIP).
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // test client of a self-signed test server
		},
	}}
}

func (k *kube) do(ctx context.Context, method, path, contentType string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, fmt.Sprintf("https://%s:%d%s", k.host, apiPort, path), rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+k.token)
	req.Header.Set("Accept", "application/json")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := k.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, b, err
}

func (k *kube) ready(ctx context.Context) error {
	code, b, err := k.do(ctx, http.MethodGet, "/readyz", "", nil)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("readyz: HTTP %d: %.200s", code, b)
	}
	return nil
}

const deployPath = "/apis/apps/v1/namespaces/default/deployments"

// createDeployment is `kubectl create deployment NAME --image=nginx --replicas=N`.
func (k *kube) createDeployment(ctx context.Context, name string, replicas int) error {
	labels := map[string]string{"app": name}
	d := map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": name, "labels": labels},
		"spec": map[string]any{
			"replicas": replicas,
			"selector": map[string]any{"matchLabels": labels},
			"template": map[string]any{
				"metadata": map[string]any{"labels": labels},
				"spec":     map[string]any{"containers": []any{map[string]any{"name": "nginx", "image": "nginx"}}},
			},
		},
	}
	code, b, err := k.do(ctx, http.MethodPost, deployPath, "application/json", d)
	if err != nil {
		return err
	}
	if code != http.StatusCreated && code != http.StatusConflict {
		return fmt.Errorf("create deployment %s: HTTP %d: %.300s", name, code, b)
	}
	return nil
}

// scale is `kubectl scale deployment NAME --replicas=N` (PATCH of the scale subresource).
func (k *kube) scale(ctx context.Context, name string, replicas int) error {
	code, b, err := k.do(ctx, http.MethodPatch, deployPath+"/"+name+"/scale", "application/merge-patch+json",
		map[string]any{"spec": map[string]any{"replicas": replicas}})
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("scale %s to %d: HTTP %d: %.300s", name, replicas, code, b)
	}
	return nil
}

// replicas reads spec.replicas of the deployment.
func (k *kube) replicas(ctx context.Context, name string) (int, error) {
	code, b, err := k.do(ctx, http.MethodGet, deployPath+"/"+name, "", nil)
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("get deployment %s: HTTP %d: %.300s", name, code, b)
	}
	var d struct {
		Spec struct {
			Replicas int `json:"replicas"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return 0, err
	}
	return d.Spec.Replicas, nil
}
