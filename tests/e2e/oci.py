"""A one-layer OCI image archive from local files, for smoke tests of the real node without a registry.

``busybox_image`` packs Debian's static busybox (``apt-get install busybox-static``) with a few
applet links; ``ctr -n k8s.io images import`` loads the archive into the node's containerd.
Deterministic: the same input files give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

APPLETS = ("sh", "sleep", "httpd", "wget", "nc", "cat", "echo", "id", "ls", "hostname", "mkdir", "nslookup")


def _tar_info(name: str, *, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, 0
    return info


def _layer(files: dict[str, tuple[bytes, int]], dirs: tuple[str, ...], links: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            tar.addfile(_tar_info(d, mode=0o1777 if d == "tmp" else 0o755, kind=tarfile.DIRTYPE))
        for name, (data, mode) in sorted(files.items()):
            tar.addfile(_tar_info(name, size=len(data), mode=mode), io.BytesIO(data))
        for name, target in sorted(links.items()):
            info = _tar_info(name, mode=0o777, kind=tarfile.SYMTYPE)
            info.linkname = target
            tar.addfile(info)
    return raw.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    tar.addfile(_tar_info(f"blobs/sha256/{digest}", size=len(data)), io.BytesIO(data))
    return f"sha256:{digest}"


def image_archive(
    out: Path,
    ref: str,
    files: dict[str, tuple[bytes, int]],
    *,
    dirs: tuple[str, ...] = (),
    links: dict[str, str] | None = None,
    cmd: list[str],
    user: str = "",
) -> Path:
    """Write an OCI image-layout tar holding one image named ``ref``; return ``out``."""
    layer = _layer(files, dirs, links or {})
    compressed = gzip.compress(layer, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "User": user, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]},
    }
    with tarfile.open(out, "w") as tar:
        layer_digest = _blob(tar, compressed)
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_digest = _blob(tar, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(compressed),
                }
            ],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
        manifest_digest = _blob(tar, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref},
                }
            ],
        }
        for name, data in (("oci-layout", {"imageLayoutVersion": "1.0.0"}), ("index.json", index)):
            payload = json.dumps(data).encode()
            tar.addfile(_tar_info(name, size=len(payload)), io.BytesIO(payload))
    return out


def busybox_image(out: Path, ref: str, busybox: Path = Path("/bin/busybox")) -> Path:
    """A static busybox image: /bin/<applet> links, /www/index.html, runs as uid 65532."""
    if not busybox.is_file():
        raise FileNotFoundError(f"{busybox} not found (Debian: apt-get install busybox-static)")
    files = {
        "bin/busybox": (busybox.read_bytes(), 0o755),
        "www/index.html": (b"fraudmodel real node\n", 0o644),
        "etc/passwd": (b"root:x:0:0:root:/:/bin/sh\nnonroot:x:65532:65532::/:/bin/sh\n", 0o644),
        "etc/group": (b"root:x:0:\nnonroot:x:65532:\n", 0o644),
    }
    links = {f"bin/{applet}": "busybox" for applet in APPLETS}
    return image_archive(
        out,
        ref,
        files,
        dirs=("bin", "etc", "tmp", "www"),
        links=links,
        cmd=["/bin/sleep", "2147483647"],
        user="65532:65532",
    )
