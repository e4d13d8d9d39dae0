#!/usr/bin/env bash
# The node's sandbox image: the pause binary built from the Kubernetes source of the
# pinned release as build/pause/Makefile builds it (its TAG, its CFLAGS: static, -Os),
# then an OCI image tarball FROM scratch with only that binary (pause-image.py).
#   build-pause.sh KUBE_SOURCE_DIR KUBE_VERSION OUT_DIR
# writes OUT_DIR/pause/pause and OUT_DIR/pause.tar, and prints the image's name.
# Two runs give the same bytes: gcc's output depends only on the source and the flags,
# and the tarball has no timestamps.
set -euo pipefail
src="${1:?usage: build-pause.sh KUBE_SOURCE_DIR KUBE_VERSION OUT_DIR}"
kube="${2:?usage: build-pause.sh KUBE_SOURCE_DIR KUBE_VERSION OUT_DIR}"
out="${3:?usage: build-pause.sh KUBE_SOURCE_DIR KUBE_VERSION OUT_DIR}"
here="$(cd "$(dirname "$0")" && pwd)"
tag="$(awk '$1 == "TAG" && $2 == "?=" {print $3}' "$src/build/pause/Makefile")"
[ -n "$tag" ] || { echo "build-pause: error: no pause TAG in $src/build/pause/Makefile" >&2; exit 1; }
image="localhost/graceful-calc/pause:$tag"
mkdir -p "$out/pause"
gcc -Os -Wall -Werror -static "-DVERSION=v$tag-$kube" -o "$out/pause/pause" "$src/build/pause/linux/pause.c"
strip "$out/pause/pause"
python3 "$here/pause-image.py" "$out/pause/pause" "$image" "$out/pause.tar"
echo "$image"
