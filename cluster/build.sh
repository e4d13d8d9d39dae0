#!/usr/bin/env bash
# Builds the lab's control plane from the official Go modules pinned in cluster/kube and
# cluster/etcd (go.mod + go.sum): kube-apiserver, kube-controller-manager, kube-scheduler
# and kubectl from k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3.
#
# The binaries go to $LAB_CLUSTER_BINS (default ~/.cache/graceful-calc/cluster-bins)/KEY,
# where KEY hashes the pinned module files and this script: a directory that is there is
# complete (it is renamed into place only after every binary built), so a second run
# does nothing. Prints the directory on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${LAB_CLUSTER_BINS:-${XDG_CACHE_HOME:-$HOME/.cache}/graceful-calc/cluster-bins}"
key="$(cat "$here/kube/go.mod" "$here/kube/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum" \
  "$here/build.sh" | sha256sum | cut -c1-16)"
out="$cache/$key"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)
if [ -d "$out" ]; then
  echo "cluster-bins: up to date in $out" >&2
  echo "$out"
  exit 0
fi
command -v go >/dev/null || { echo "cluster-bins: error: the go command is not on PATH (Go 1.26 or newer builds the control plane)" >&2; exit 1; }
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.build-$key.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS

# The version stamps hack/lib/version.sh sets, so `kube-apiserver --version` prints the
# release and the API server reports it to clients (kubectl's version skew check).
kube="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/kube/go.mod")"
[[ "$kube" =~ ^v([0-9]+)\.([0-9]+)\. ]] || { echo "cluster-bins: error: no k8s.io/kubernetes version in $here/kube/go.mod" >&2; exit 1; }
major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
released="$(cd "$here/kube" && go mod download -json "k8s.io/kubernetes@$kube" | sed -n 's/^\t"Info": "\(.*\)",$/\1/p' | xargs cat | sed -n 's/.*"Time":"\([^"]*\)".*/\1/p')"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${released:-1970-01-01T00:00:00Z}"
done

echo "cluster-bins: building Kubernetes $kube (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) into $out (the first build on a machine takes minutes: README, \"A real control plane\")" >&2
(cd "$here/kube" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
etcd="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$here/etcd/go.mod")"
echo "cluster-bins: building etcd $etcd" >&2
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
for b in "${bins[@]}"; do
  [ -x "$tmp/$b" ] || { echo "cluster-bins: error: $b was not built" >&2; exit 1; }
done
printf 'kubernetes %s\netcd %s\n' "$kube" "$etcd" > "$tmp/VERSIONS"
mv "$tmp" "$out"
trap - EXIT
echo "cluster-bins: built in $((SECONDS - start)) s into $out" >&2
echo "$out"
