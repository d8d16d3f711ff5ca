"""Host folders in a QEMU VM: virtio-fs through virtiofsd when this host has it (scripts/host-tools builds it), else
QEMU's built-in 9p, chosen by measurement (docs/local-vms.md#host-folders). Each share gets a tag (``mount0``…), its
QEMU devices, for virtio-fs a virtiofsd started before QEMU (it serves one QEMU and exits with it), and a line of the
guest's mount table."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

from components.drivers._local import process
from components.drivers._local.paths import cache_root
from components.drivers._local.shares import fstab_line
from components.drivers.qemu.instance import Files

VIRTIOFS, NINEP = "virtiofs", "9p"
# The SSH user cloud-init creates first: the host user's files are its files in the guest (virtio-fs).
GUEST_UID = 1000
SYSTEM_CACHE = "/var/cache/docker-machine-pulumi"
# 9p's coherent mode: host edits show at once (cache=loose hides them), mmap works.
NINEP_OPTIONS = ["trans=virtio", "version=9p2000.L", "msize=512000", "cache=mmap"]


def virtiofsd() -> str | None:
    """The virtiofsd scripts/host-tools built (the user's cache, then the system's), else one on PATH."""
    for base in (cache_root(), os.environ.get("DMP_SYSTEM_CACHE") or SYSTEM_CACHE):
        path = os.path.join(base, "tools", "bin", "virtiofsd")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("virtiofsd")


def mechanism(requested: str = "auto") -> str:
    """``mount_type``: auto is virtio-fs where virtiofsd is, else 9p."""
    if requested != "auto":
        return requested
    return VIRTIOFS if virtiofsd() else NINEP


def tag(index: int) -> str:
    return f"mount{index}"


def socket_of(files: Files, index: int) -> str:
    return os.path.join(files.dir, f"virtiofs{index}.sock")


def pidfile_of(files: Files, index: int) -> str:
    return os.path.join(files.dir, f"virtiofs{index}.pid")


def qemu_args(mounts: list[dict[str, Any]], kind: str, files: Files, memory_mib: int) -> list[str]:
    if not mounts:
        return []
    args: list[str] = []
    if kind == VIRTIOFS:
        # vhost-user devices read the guest's memory: it must be shareable.
        args += ["-object", f"memory-backend-memfd,id=mem,size={memory_mib}M,share=on", "-numa", "node,memdev=mem"]
    for index, mount in enumerate(mounts):
        if kind == VIRTIOFS:
            args += ["-chardev", f"socket,id=fs{index},path={socket_of(files, index)}",
                     "-device", f"vhost-user-fs-pci,chardev=fs{index},tag={tag(index)}"]  # fmt: skip
        else:
            readonly = "" if mount["writable"] else ",readonly=on"
            args += ["-fsdev", f"local,id=fs{index},path={mount['path']},security_model=none{readonly}",
                     "-device", f"virtio-9p-pci,fsdev=fs{index},mount_tag={tag(index)}"]  # fmt: skip
    return args


def _virtiofsd_argv(binary: str, mount: dict[str, Any], socket: str) -> list[str]:
    argv = [binary, "--shared-dir", mount["path"], "--socket-path", socket, "--cache", "auto",
            "--sandbox", "namespace", "--log-level", "warn"]  # fmt: skip
    if not mount["writable"]:
        argv.append("--readonly")
    if os.geteuid() != 0:
        # Unprivileged, it cannot give files other owners: whatever guest user writes, the file is this user's; and
        # this user's files are the SSH user's in the guest, so non-root containers of that uid can write too.
        uid, gid = os.geteuid(), os.getegid()
        argv += ["--translate-uid", f"squash-guest:0:{uid}:4294967295", "--translate-uid", f"host:{uid}:{GUEST_UID}:1",
                 "--translate-gid", f"squash-guest:0:{gid}:4294967295"]  # fmt: skip
    return argv


def start(mounts: list[dict[str, Any]], kind: str, files: Files) -> None:
    """virtio-fs: one virtiofsd per share, listening before QEMU starts (stale ones stopped first)."""
    stop(files, len(mounts))
    if kind != VIRTIOFS or not mounts:
        return
    binary = virtiofsd()
    if binary is None:
        raise RuntimeError("virtiofsd is gone (scripts/host-tools builds it)")
    for index, mount in enumerate(mounts):
        socket = socket_of(files, index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket)
        process.spawn(_virtiofsd_argv(binary, mount, socket), pidfile=pidfile_of(files, index),
                      log=os.path.join(files.dir, f"virtiofs{index}.log"))  # fmt: skip
        if not process.settle(lambda s=socket: os.path.exists(s), 10, 0.05):
            raise RuntimeError(f"virtiofsd for {mount['path']} did not start: see {files.dir}/virtiofs{index}.log")


def stop(files: Files, at_least: int = 0) -> None:
    """The virtiofsd daemons of this VM (they exit with their QEMU; after a crash they may not have)."""
    index = 0
    while index < at_least or os.path.exists(pidfile_of(files, index)):
        process.stop(pidfile_of(files, index), "--socket-path", socket_of(files, index))
        index += 1


def guest_table(mounts: list[dict[str, Any]], kind: str) -> list[str]:
    """The guest's fstab lines for ``mounts``."""
    lines = []
    for index, mount in enumerate(mounts):
        mode = "rw" if mount["writable"] else "ro"
        options = [mode] if kind == VIRTIOFS else [*NINEP_OPTIONS, mode]
        lines.append(fstab_line(tag(index), mount["path"], kind, options))
    return lines

