#!/usr/bin/env bash
# Builds a real Kubernetes node from the official Go modules pinned in cluster/node
# (go.mod + go.sum, written by cluster/node/gen-pins.sh): kubelet and kube-proxy from
# k8s.io/kubernetes at the control plane's version, containerd 2.x with its CRI plugin,
# ctr and the runc shim, runc 1.5.x, and the CNI plugins bridge, host-local, loopback and
# portmap; and the sandbox ("pause") image from the Kubernetes pause source of the same
# release, as an OCI image tarball FROM scratch.
#
# The result goes to $LAB_NODE_BINS (default ~/.cache/graceful-calc/node-bins)/KEY, where
# KEY hashes the pinned module files, this script and the pause image's: a directory that
# is there is complete (it is renamed into place only after everything built), so a
# second run does nothing. Prints the directory on stdout; progress goes to stderr.
#   KEY/bin/   kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc
#   KEY/cni/   bridge host-local loopback portmap
#   KEY/pause.tar  the OCI image (its name in KEY/VERSIONS)
# Needs go (1.26), gcc with libc6-dev (the static pause, runc's nsenter) and
# libseccomp-dev (runc's seccomp): `make cluster-bins` installs the last two from Debian.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
node="$here/node"
cache="${LAB_NODE_BINS:-${XDG_CACHE_HOME:-$HOME/.cache}/graceful-calc/node-bins}"
key_files=()
for m in kube containerd runc cni; do key_files+=("$node/$m/go.mod" "$node/$m/go.sum"); done
key_files+=("$here/build-node.sh" "$node/build-pause.sh" "$node/pause-image.py")
key="$(cat "${key_files[@]}" | sha256sum | cut -c1-16)"
out="$cache/$key"
if [ -d "$out" ]; then
  echo "node-bins: up to date in $out" >&2
  echo "$out"
  exit 0
fi
fail() { echo "node-bins: error: $*" >&2; exit 1; }
command -v go >/dev/null || fail "the go command is not on PATH (Go 1.26 or newer builds the node)"
command -v gcc >/dev/null || fail "no gcc (the pause binary and runc need it: apt-get install gcc libc6-dev, or make cluster-bins)"
command -v python3 >/dev/null || fail "no python3 (it writes the pause image)"
echo '#include <seccomp.h>' | gcc -E - >/dev/null 2>&1 \
  || fail "no seccomp.h (runc's seccomp needs libseccomp-dev: apt-get install libseccomp-dev, or make cluster-bins)"
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.build-$key.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bin" "$tmp/cni"
start=$SECONDS
# The version a module's go.mod requires: `require M V` or `\tM V` in a block.
pinned() { awk -v m="$1" '$1 == m {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$node/$2/go.mod"; }

# kubelet and kube-proxy, stamped as cluster/build.sh stamps the control plane.
kube="$(pinned k8s.io/kubernetes kube)"
[[ "$kube" =~ ^v([0-9]+)\.([0-9]+)\. ]] || fail "no k8s.io/kubernetes version in $node/kube/go.mod"
major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
kube_info="$(cd "$node/kube" && go mod download -json "k8s.io/kubernetes@$kube")"
released="$(echo "$kube_info" | sed -n 's/^\t"Info": "\(.*\)",$/\1/p' | xargs cat | sed -n 's/.*"Time":"\([^"]*\)".*/\1/p')"
kube_dir="$(echo "$kube_info" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${released:-1970-01-01T00:00:00Z}"
done
echo "node-bins: building Kubernetes $kube (kubelet, kube-proxy) into $out" >&2
(cd "$node/kube" && go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)

# containerd as its Makefile builds it, less btrfs (cgo headers this machine lacks; the
# overlayfs snapshotter is the one used). The shim is static and without cgo, as upstream's.
containerd="$(pinned github.com/containerd/containerd/v2 containerd)"
echo "node-bins: building containerd $containerd (containerd, ctr, containerd-shim-runc-v2)" >&2
cpkg=github.com/containerd/containerd/v2
cflags="-X $cpkg/version.Version=$containerd -X $cpkg/version.Package=$cpkg"
(cd "$node/containerd" && go build -trimpath -tags "urfave_cli_no_docs no_btrfs" \
  -ldflags "-s -w $cflags" -o "$tmp/bin/" "$cpkg/cmd/containerd" "$cpkg/cmd/ctr")
(cd "$node/containerd" && CGO_ENABLED=0 go build -trimpath -tags "urfave_cli_no_docs no_grpc" \
  -ldflags "-s -w $cflags" -o "$tmp/bin/" "$cpkg/cmd/containerd-shim-runc-v2")

# runc with seccomp (libseccomp), without libpathrs (a Rust library Debian 12 lacks: runc
# then uses its built-in Go path resolution, as every build before 1.5 did).
runc="$(pinned github.com/opencontainers/runc runc)"
echo "node-bins: building runc $runc" >&2
(cd "$node/runc" && go build -trimpath -tags "seccomp urfave_cli_no_docs" \
  -ldflags "-s -w -X main.gitCommit=$runc" -o "$tmp/bin/runc" github.com/opencontainers/runc)

cni="$(pinned github.com/containernetworking/plugins cni)"
echo "node-bins: building the CNI plugins $cni (bridge, host-local, loopback, portmap)" >&2
ppkg=github.com/containernetworking/plugins
(cd "$node/cni" && CGO_ENABLED=0 go build -trimpath \
  -ldflags "-s -w -X $ppkg/pkg/utils/buildversion.BuildVersion=$cni" -o "$tmp/cni/" \
  "$ppkg/plugins/main/bridge" "$ppkg/plugins/ipam/host-local" \
  "$ppkg/plugins/main/loopback" "$ppkg/plugins/meta/portmap")

# The sandbox image, from the Kubernetes source of the same release.
echo "node-bins: building the pause image from k8s.io/kubernetes@$kube" >&2
pause_image="$("$node/build-pause.sh" "$kube_dir" "$kube" "$tmp")"

for b in bin/kubelet bin/kube-proxy bin/containerd bin/ctr bin/containerd-shim-runc-v2 bin/runc \
  cni/bridge cni/host-local cni/loopback cni/portmap pause/pause; do
  [ -x "$tmp/$b" ] || fail "$b was not built"
done
printf 'kubernetes %s\ncontainerd %s\nrunc %s\ncni-plugins %s\npause-image %s\n' \
  "$kube" "$containerd" "$runc" "$cni" "$pause_image" > "$tmp/VERSIONS"
mv "$tmp" "$out"
trap - EXIT
echo "node-bins: built in $((SECONDS - start)) s into $out" >&2
echo "$out"
