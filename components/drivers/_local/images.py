"""Disk images of the local drivers: remote images fetched once into the cache over https and checked against their
sha256, and every disk checked before a VM is made from it (no backing file, no external data file: either would
hand a file of this host to the guest)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.parse
import urllib.request

from components.drivers._local.paths import cache_root, run

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# image_sha256: the checksum file the image's publisher puts beside it (e.g. Ubuntu's cloud images), over https.
PUBLISHED = "published"
SUMS_FILE = "SHA256SUMS"
_CHUNK = 1 << 20


class ImageError(RuntimeError):
    """An image that must not be used, in one line."""


def check_url(url: str) -> str:
    """Remote images come over https only (a plain http image could be anything by the time it arrives)."""
    if not url.startswith("https://"):
        raise ValueError(f"{url!r}: remote images must be https:// URLs (with image_sha256)")
    return url


def check_sha256(value: str | None, image: str) -> str | None:
    """``image_sha256`` as given: required for an image URL, a 64-digit hex digest or ``published``."""
    if image.startswith(("http://", "https://")):
        if value is None:
            raise ValueError(f"image_sha256 is required for the image URL {image!r} (the sha256sum of the file)")
        if value != PUBLISHED and not SHA256_RE.match(value.lower()):
            raise ValueError(f"image_sha256 {value!r} must be 64 hex digits, or {PUBLISHED!r} ({SUMS_FILE} beside it)")
        return value.lower()
    if value is not None:
        raise ValueError("image_sha256 is only used with an image URL")
    return None


def _published_sum(url: str) -> str:
    sums_url = urllib.parse.urljoin(url, SUMS_FILE)
    name = os.path.basename(urllib.parse.urlparse(url).path)
    with urllib.request.urlopen(sums_url, timeout=60) as response:
        for line in response.read().decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == name and SHA256_RE.match(parts[0].lower()):
                return parts[0].lower()
    raise ImageError(f"image {url}: {sums_url} lists no sha256 for {name}")


def fetch(url: str, sha256: str) -> str:
    """The image at ``url`` in the cache (downloaded once, by its checksum); ImageError when it does not match."""
    check_url(url)
    wanted = _published_sum(url) if sha256 == PUBLISHED else sha256.lower()
    target_dir = os.path.join(cache_root(), "images", f"sha256-{wanted}")
    target = os.path.join(target_dir, os.path.basename(urllib.parse.urlparse(url).path) or "disk.img")
    if os.path.exists(target):
        return target
    os.makedirs(target_dir, exist_ok=True)
    partial, digest = f"{target}.{os.getpid()}.partial", hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != wanted:
            raise ImageError(f"image {url}: its sha256 is {digest.hexdigest()}, not {wanted} (image_sha256)")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def check_disk(path: str) -> str:
    """The disk's format, once ``qemu-img info`` shows it stands alone: a backing file or an external data file would
    make a VM read a file of this host (e.g. a private key) as part of its disk."""
    if not shutil.which("qemu-img"):
        raise ImageError("qemu-img is not installed (qemu-utils)")
    result = run("qemu-img", "info", "--output=json", path, check=False)
    if result.returncode != 0:
        raise ImageError(f"image {path} cannot be read: {(result.stderr or result.stdout).strip()[:200]}")
    info = json.loads(result.stdout)
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageError(f"image {path} has a backing file ({info.get('backing-filename')}): give a standalone image")
    data_file = ((info.get("format-specific") or {}).get("data") or {}).get("data-file")
    if data_file:
        raise ImageError(f"image {path} keeps its data in an external file ({data_file}): give a standalone image")
    return info["format"]


def overlay(path: str, backing: str, backing_format: str, size_mib: int) -> None:
    """A machine's own qcow2 disk over a shared, never-written one (the image, or a template's frozen disk)."""
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, path, f"{int(size_mib)}M")
