"""Writes an OCI image tarball FROM scratch holding one static binary, the way the
Kubernetes pause image is made (build/pause/Dockerfile: the binary at /pause, run as
65535:65535, its entrypoint): `pause-image.py BINARY NAME OUT.tar`.

Every byte is fixed by the binary and the name (no timestamps, owners or compression
levels), so two builds of the same binary give the same digest. The layout is the OCI
image layout (oci-layout, index.json, blobs/sha256/...) that `ctr images import` reads;
the index names the image in containerd's annotation, so it imports under NAME.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def _tar(members: list[tuple[str, bytes, int]]) -> bytes:
    """A reproducible tar: each (name, bytes, mode) owned by 0:0, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }


def image(binary: bytes, name: str) -> bytes:
    layer = _tar([("pause", binary, 0o755)])
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [_descriptor(LAYER, layer)["digest"]]},
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": _descriptor(CONFIG, config),
            "layers": [_descriptor(LAYER, layer)],
        }
    )
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    **_descriptor(MANIFEST, manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    )
    blobs = [
        (f"blobs/sha256/{hashlib.sha256(b).hexdigest()}", b, 0o644)
        for b in (layer, config, manifest)
    ]
    return _tar(
        [
            ("oci-layout", _json({"imageLayoutVersion": "1.0.0"}), 0o644),
            ("index.json", index, 0o644),
            *blobs,
        ]
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: pause-image.py BINARY NAME OUT.tar", file=sys.stderr)
        return 2
    binary, name, out = Path(argv[0]), argv[1], Path(argv[2])
    out.write_bytes(image(binary.read_bytes(), name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
