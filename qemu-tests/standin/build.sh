#!/usr/bin/env bash
# Build the edgepair k3s stand-in (NOT k3s): kine + kube-apiserver from upstream Go
# modules, embedded in one self-extracting `k3s` wrapper binary (like real k3s, which
# also unpacks its payload on first start). Real k3s cannot be fetched on the build
# machines (its module is refused by the proxy, no registry is reachable).
#
# Usage: qemu-tests/standin/build.sh [CACHE_DIR]
# Output: CACHE_DIR/k3s (pass it to `builder build --k3s CACHE_DIR/k3s`).
# Every stage is reused when its output exists; delete CACHE_DIR to rebuild.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-$here/../../.cache/standin}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
KINE_VERSION=${KINE_VERSION:-v0.17.5}
K8S_VERSION=${K8S_VERSION:-v1.34.2}       # k8s.io/kubernetes
STAGING_VERSION=${STAGING_VERSION:-v0.34.2} # every k8s.io/<staging> module
export CGO_ENABLED=0
t0=$(date +%s)
log() { echo "standin: $* ($(( $(date +%s) - t0 )) s)" >&2; }

if [ ! -x "$cache/kine-$KINE_VERSION" ]; then
	log "building kine $KINE_VERSION (about 100 s on 2 cores)"
	GOBIN="$cache/gobin" nice go install -trimpath -ldflags '-s -w' "github.com/k3s-io/kine@$KINE_VERSION"
	mv "$cache/gobin/kine" "$cache/kine-$KINE_VERSION"
fi

if [ ! -x "$cache/kube-apiserver-$K8S_VERSION" ]; then
	log "building kube-apiserver $K8S_VERSION (about 190 s on 2 cores)"
	mod="$cache/apiserver-mod"
	rm -rf "$mod" && mkdir -p "$mod"
	cd "$mod"
	cat >go.mod <<MOD
module edgepair.local/standin-apiserver

go 1.25
MOD
	cat >tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
	# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
	# ./staging/...; a consumer must pin each one to the published tag instead.
	staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller"
	for m in $staging; do
		echo "replace k8s.io/$m => k8s.io/$m $STAGING_VERSION" >>go.mod
	done
	nice go get "k8s.io/kubernetes@$K8S_VERSION"
	nice go mod tidy # go.sum entries of every package kube-apiserver imports
	nice go build -trimpath -ldflags '-s -w' -o "$cache/kube-apiserver-$K8S_VERSION" k8s.io/kubernetes/cmd/kube-apiserver
	cd "$here"
fi

log "building the k3s stand-in wrapper"
payload="$here/cmd/k3s/payload"
cp "$cache/kine-$KINE_VERSION" "$payload/kine"
cp "$cache/kube-apiserver-$K8S_VERSION" "$payload/kube-apiserver"
printf 'kine %s\nkube-apiserver %s\n' "$KINE_VERSION" "$K8S_VERSION" >"$payload/VERSIONS"
(cd "$here" && nice go build -trimpath -ldflags "-s -w" -o "$cache/k3s" ./cmd/k3s)
rm -f "$payload/kine" "$payload/kube-apiserver"
log "done: $cache/k3s ($(du -h "$cache/k3s" | cut -f1))"
