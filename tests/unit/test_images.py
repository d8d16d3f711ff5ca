"""What an image must be before a VM is made from it: over https with its sha256, and standing alone (no backing
file, no external data file: either would hand a file of this host to the guest)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from components import config
from components.config import ConfigError
from components.drivers._local import images
from tests.fakes.http import https_files

needs_qemu_img = pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (make setup)")


def problem(options: dict) -> str:
    with pytest.raises(ConfigError) as refused:
        config.parse([{"name": "m", "options": options}])
    lines = str(refused.value).splitlines()[1:]
    assert len(lines) == 1, lines
    return lines[0].strip()


def test_a_plain_http_image_is_refused_in_one_line():
    line = problem({"image": "http://images.example.test/disk.qcow2", "image_sha256": "a" * 64})
    assert line.startswith("machines[m].options.image:") and "must be https:// URLs" in line


def test_an_image_url_needs_its_sha256():
    line = problem({"image": "https://images.example.test/disk.qcow2"})
    assert "image_sha256 is required for the image URL" in line
    assert "64 hex digits" in problem({"image": "https://images.example.test/disk.qcow2", "image_sha256": "abc"})
    assert "only used with an image URL" in problem({"image_sha256": "a" * 64})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DMP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_download_whose_sha256_differs_is_refused_and_not_kept(cache, pki, monkeypatch):
    body = b"QFI\xfb" + os.urandom(64)
    with https_files({"/disk.qcow2": body}, pki, monkeypatch) as server:
        with pytest.raises(images.ImageError) as refused:
            images.fetch(f"{server.base}/disk.qcow2", "0" * 64)
        good = images.fetch(f"{server.base}/disk.qcow2", hashlib.sha256(body).hexdigest())
    message = str(refused.value)
    assert "\n" not in message and f"its sha256 is {hashlib.sha256(body).hexdigest()}, not {'0' * 64}" in message
    assert open(good, "rb").read() == body
    kept = cache / "images" / f"sha256-{hashlib.sha256(body).hexdigest()}" / "disk.qcow2"
    assert [p for p in cache.rglob("*") if p.is_file()] == [kept]  # nothing of the bad download is left


def test_published_checksums_are_read_beside_the_image(cache, pki, monkeypatch):
    body = b"KDMV" + os.urandom(64)
    sums = f"{hashlib.sha256(body).hexdigest()} *noble.vmdk\n{'1' * 64}  other.img\n".encode()
    with https_files({"/rel/noble.vmdk": body, "/rel/SHA256SUMS": sums}, pki, monkeypatch) as server:
        path = images.fetch(f"{server.base}/rel/noble.vmdk", images.PUBLISHED)
    assert open(path, "rb").read() == body


def disk_over(tmp_path, backing) -> str:
    """A qcow2 whose backing file is ``backing`` (a file of this host, say a private key)."""
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "raw", str(disk), "1M"],
                   check=True)  # fmt: skip
    return str(disk)


@needs_qemu_img
def test_a_qcow2_with_a_backing_file_is_refused(tmp_path):
    secret = tmp_path / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    disk = disk_over(tmp_path, secret)
    with pytest.raises(images.ImageError) as refused:
        images.check_disk(str(disk))
    assert str(refused.value) == f"image {disk} has a backing file ({secret}): give a standalone image"


@needs_qemu_img
def test_a_local_image_with_a_backing_file_is_one_line_at_preview(tmp_path):
    secret = tmp_path / "id_ed25519"
    secret.write_text("key")
    disk = disk_over(tmp_path, secret)
    with pytest.raises(ConfigError) as refused:
        config.preflight(config.parse([{"name": "m", "options": {"image": disk}}]))
    (line,) = str(refused.value).splitlines()[1:]
    assert line.strip() == (
        f"machines[m].options.image: image {disk} has a backing file ({secret}): give a standalone image"
    )


@needs_qemu_img
def test_a_standalone_disk_passes_with_its_format(tmp_path):
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    assert images.check_disk(str(disk)) == "qcow2"
