#!/usr/bin/env bash
# Smoke test of a built k3s stand-in on this host, isolated in a network namespace
# it creates and deletes: a throw-away PostgreSQL 15, `k3s server` with a k3s
# config.yaml pointing at it, then the same requests the pair test makes (readyz,
# create a Deployment, scale it, read it back) over HTTPS with the token.
# Usage (root): qemu-tests/standin/check.sh [K3S_BINARY]
set -euo pipefail
k3s=$(readlink -f "${1:-$(dirname "$0")/../../.cache/standin/k3s}")
[ -x "$k3s" ] || { echo "check: $k3s missing (make standin)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "check: needs root (network namespace)" >&2; exit 1; }
pgbin=/usr/lib/postgresql/15/bin
ns="ep-standin-check-$$"
work=$(mktemp -d)
k3spid=""
cleanup() {
	[ -n "$k3spid" ] && kill "$k3spid" 2>/dev/null && wait "$k3spid" 2>/dev/null || true
	ip netns exec "$ns" su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $work/pg -m immediate stop" >/dev/null 2>&1 || true
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
inns() { ip netns exec "$ns" "$@"; }
chown postgres "$work"
su postgres -s /bin/sh -c "$pgbin/initdb -D $work/pg -A trust >/dev/null"
inns su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $work/pg -o '-k $work -h 127.0.0.1 -p 55432' -l $work/pg.log -w start >/dev/null"
inns psql -h 127.0.0.1 -p 55432 -U postgres -qc "CREATE ROLE k3s LOGIN PASSWORD 'pw'" -c "CREATE DATABASE kubernetes OWNER k3s"
token=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
cat >"$work/config.yaml" <<CFG
datastore-endpoint: "postgres://k3s:pw@127.0.0.1:55432/kubernetes?sslmode=disable"
token: "$token"
node-ip: "127.0.0.1"
tls-san: ["198.18.10.10"]
write-kubeconfig: "$work/k3s.yaml"
CFG
"$k3s" --version
start=$(date +%s.%N)
# ip netns exec execs k3s: $! is the stand-in itself (a shell function would fork)
ip netns exec "$ns" "$k3s" server --config "$work/config.yaml" --data-dir "$work/data" >"$work/k3s.log" 2>&1 &
k3spid=$!
api() { inns curl -sk -H "Authorization: Bearer $token" "$@"; }
for i in $(seq 1 120); do
	[ "$(api -o /dev/null -w '%{http_code}' https://127.0.0.1:6443/readyz)" = 200 ] && break
	kill -0 "$k3spid" 2>/dev/null || { tail -30 "$work/k3s.log"; echo "check: k3s exited" >&2; exit 1; }
	sleep 1
done
echo "check: API ready $(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || true) s after start"
api -o /dev/null -w '%{http_code}\n' -X POST -H 'Content-Type: application/json' https://127.0.0.1:6443/apis/apps/v1/namespaces/default/deployments \
	-d '{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"nginx"},"spec":{"replicas":4,"selector":{"matchLabels":{"app":"nginx"}},"template":{"metadata":{"labels":{"app":"nginx"}},"spec":{"containers":[{"name":"nginx","image":"nginx"}]}}}}' | grep -qx 201
api -o /dev/null -w '%{http_code}\n' -X PATCH -H 'Content-Type: application/merge-patch+json' https://127.0.0.1:6443/apis/apps/v1/namespaces/default/deployments/nginx/scale -d '{"spec":{"replicas":5}}' | grep -qx 200
api https://127.0.0.1:6443/apis/apps/v1/namespaces/default/deployments/nginx | grep -q '"replicas": 5'
inns psql -h 127.0.0.1 -p 55432 -U postgres -d kubernetes -Atc "SELECT count(*) FROM kine" | grep -qv '^0$'
grep -q "edgepair k3s stand-in (kine + kube-apiserver), not k3s" "$work/k3s.log"
echo "check: ok (deployment created, scaled to 5 and read back; kine table filled)"
