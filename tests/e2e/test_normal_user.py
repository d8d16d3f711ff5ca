"""A normal user's day (issue 19), as a throwaway non-root user this module creates and removes: a clone of the
project, the README's `make up` with an empty cache of its own (the image built without root; the Pulumi toolchain and
virtiofsd shared read-only), `env` and `docker run -v "$PWD":/app` on a folder of its home, then `mounts` changed.

One VM boot cold, one warm (after `make down`) with `mounts: []`, and one power cycle when a mount is added."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest
import yaml

from components.drivers.qemu import shares
from tests import docblocks
from tests.e2e.conftest import ROOT, have_tools, processes_matching, record_figure

NEEDS = ("useradd", "userdel", "runuser", "mmdebstrap", "newuidmap")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)"),
    pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in NEEDS),
                       reason=f"making a throwaway user needs root and {', '.join(NEEDS)}"),  # fmt: skip
]
DOCKERFILE = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'


class NormalUser:
    def __init__(self, name: str, shared: str):
        entry = pwd.getpwnam(name)
        self.name, self.uid, self.home = name, entry.pw_uid, entry.pw_dir
        self.repo = os.path.join(self.home, "docker-machine-pulumi")
        # What a login gives: no SHELL (CI's way), the shared toolchain first on PATH, the host's pip settings.
        self.env = {
            "HOME": self.home, "USER": name, "LOGNAME": name, "LANG": "C.UTF-8",
            "PATH": f"{shared}/toolchain:/usr/local/bin:/usr/bin:/bin",
            "DMP_SYSTEM_CACHE": f"{shared}/system-cache",
            **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
        }  # fmt: skip

    def run(self, script: str, cwd: str | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*docblocks.as_user(self.name, self.env), "bash", "-e", "-o", "pipefail", "-c", script],
                              cwd=cwd or self.repo, capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def ok(self, script: str, cwd: str | None = None, timeout: float = 3600) -> str:
        result = self.run(script, cwd, timeout)
        assert result.returncode == 0, f"{script}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        return result.stdout

    def docker(self, args: str, cwd: str | None = None) -> str:
        return self.ok(f'eval "$(scripts/machine env default)"; cd "{cwd or self.repo}"; docker {args}', self.repo)

    def set_options(self, options: dict) -> None:
        path = os.path.join(self.repo, "stacks", "Pulumi.local.yaml")
        config = yaml.safe_load(open(path))
        config["config"]["docker-machine:machines"][0]["options"] = options
        self.ok(f"cat > stacks/Pulumi.local.yaml <<'EOF'\n{yaml.safe_dump(config)}EOF\n")


def files_outside(uid: int, home: str, shared: str) -> list[str]:
    """Files the user owns outside its home (and the shared caches), on the root filesystem and /tmp, /var/tmp."""
    found = subprocess.run(["find", "/", "-xdev", "-user", str(uid), "-not", "-path", f"{home}/*", "-not", "-path",
                            home, "-not", "-path", f"{shared}/*"], capture_output=True, text=True)  # fmt: skip
    return [line for line in found.stdout.splitlines() if not line.startswith(("/proc/", "/sys/", "/dev/"))]


@pytest.fixture(scope="module")
def user():
    name = f"dmp{os.getpid() % 100000}"
    shared = tempfile.mkdtemp(prefix="dmp-e2e-shared-", dir="/var/tmp")
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    try:
        # Read-only for the user: the toolchain root has (scripts/toolchain), its virtiofsd (scripts/host-tools), and
        # the project to clone (the checkout itself may sit in a home the user cannot read).
        toolchain = subprocess.run([os.path.join(ROOT, "scripts", "toolchain")], capture_output=True, text=True,
                                   check=True).stdout.strip()  # fmt: skip
        shutil.copytree(toolchain, os.path.join(shared, "toolchain"))
        tools = os.path.join(shared, "system-cache", "tools", "bin")
        os.makedirs(tools)
        host_tools = subprocess.run([os.path.join(ROOT, "scripts", "host-tools")], capture_output=True, text=True,
                                    check=True).stdout.strip()  # fmt: skip
        for tool in ("virtiofsd", "docker-buildx", "docker-compose"):  # what root's scripts/host-tools built
            if os.path.exists(os.path.join(host_tools, tool)):
                shutil.copy(os.path.join(host_tools, tool), os.path.join(tools, tool))
        # --no-local: a local clone hardlinks our objects, and the chown below would hand them to the user.
        bare = os.path.join(shared, "project.git")
        subprocess.run(["git", "clone", "-q", "--bare", "--no-local", ROOT, bare], check=True)
        subprocess.run(["chmod", "-R", "a+rX,go-w", shared], check=True)
        # git refuses to read a repository another user owns: the user's own copy to clone from.
        subprocess.run(["chown", "-R", name, bare], check=True)
        normal = NormalUser(name, shared)
        normal.shared = shared
        normal.ok(f"git clone -q {shared}/project.git {normal.repo}", cwd=normal.home)
        yield normal
    finally:
        # Its VM, virtiofsd and forwarder go with it, then the user and its home.
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        time.sleep(1)
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        shutil.rmtree(shared, ignore_errors=True)


def timed(normal: NormalUser, marker: str, lines: int | None = None) -> float:
    start = time.monotonic()
    result = docblocks.run(marker, normal.repo, normal.env, lines=lines, user=normal.name, timeout=3600)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return time.monotonic() - start


def test_make_up_without_root_with_an_empty_cache(user):
    cold = timed(user, "readme-setup", lines=1)  # the README's `make up`
    record_figure("normal user: make up, empty cache (image built without root, venv, VM)", f"{cold:.0f} s")
    image = user.ok("scripts/build-image debian-13-docker").strip()
    assert image.startswith(os.path.join(user.home, ".cache", "docker-machine-pulumi", "images"))
    out = docblocks.run("readme-env", user.repo, user.env, user=user.name)
    assert out.returncode == 0 and "Server:" in out.stdout, out.stderr
    mechanism = "virtiofs" if shares.virtiofsd() else "9p"
    assert processes_matching(f"--socket-path {user.home}/") if mechanism == "virtiofs" else True
    record_figure("normal user: host folder mechanism", mechanism)


def test_the_home_is_shared_writable_and_owned_by_the_user(user):
    project = os.path.join(user.home, "proj")
    user.ok(f"mkdir -p {project} && echo from-host > {project}/in && cp /bin/busybox {project}/busybox && "
            f"printf '%s' '{DOCKERFILE}' > {project}/Dockerfile")  # fmt: skip
    user.docker("build -q -t e2e/busybox .", cwd=project)
    out = user.docker("""run --rm -v "$PWD":/app e2e/busybox sh -c 'cat /app/in; echo out > /app/out; """
                      """echo more >> /app/in'""", cwd=project)  # fmt: skip
    assert out.strip() == "from-host"
    written = os.stat(os.path.join(project, "out"))
    assert (written.st_uid, open(os.path.join(project, "out")).read()) == (user.uid, "out\n")
    assert open(os.path.join(project, "in")).read() == "from-host\nmore\n"  # the user's own file, writable
    record_figure("normal user: a container's file in the share belongs to", pwd.getpwuid(written.st_uid).pw_name)


def test_a_host_edit_is_seen_by_a_running_container_within_a_second(user):
    """Written in place (most editors, `>`): at once. Saved by rename (vim's default): once the guest's cached name
    expires, which virtio-fs's cache=auto holds for 1 s (docs/local-vms.md#host-folders)."""
    project = os.path.join(user.home, "proj")
    seen = os.path.join(project, "seen")
    user.ok(f"echo v1 > {project}/live")
    user.docker("""run -d --name reader -v "$PWD":/app e2e/busybox sh -c """
                """'while :; do cat /app/live > /app/seen; sleep 0.05; done'""", cwd=project)  # fmt: skip

    def edit_then_wait(command: str, want: str) -> float:
        start = time.monotonic()
        user.ok(command)
        while time.monotonic() - start < 10 and open(seen).read() != want:
            time.sleep(0.02)
        assert open(seen).read() == want
        return time.monotonic() - start

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (os.path.exists(seen) and open(seen).read() == "v1\n"):
            time.sleep(0.05)
        in_place = edit_then_wait(f"echo v2 > {project}/live", "v2\n")
        renamed = edit_then_wait(f"echo v3 > {project}/live.new && mv {project}/live.new {project}/live", "v3\n")
        record_figure("normal user: a host edit (in place) seen in the container after", f"{in_place:.2f} s")
        record_figure("normal user: a host save by rename seen in the container after", f"{renamed:.2f} s")
        assert in_place < 1, in_place
        assert renamed < 1.5, renamed  # the 1 s name cache, the reader's 50 ms loop, this user's shell
    finally:
        user.docker("rm -f reader")


def test_nothing_is_written_outside_the_home(user):
    assert files_outside(user.uid, user.home, user.shared) == []


def test_make_down_then_make_up_warm_without_mounts(user):
    assert docblocks.run("readme-down", user.repo, user.env, user=user.name).returncode == 0
    user.set_options({"mounts": []})
    warm = timed(user, "readme-setup", lines=1)
    record_figure("normal user: make up again (warm cache, new VM)", f"{warm:.0f} s")
    project = os.path.join(user.home, "proj")
    user.docker("build -q -t e2e/busybox .", cwd=project)
    assert user.docker("""run --rm -v "$PWD":/app e2e/busybox ls -A /app""", cwd=project).strip() == ""
    user.docker("volume create kept")
    user.docker("run --rm -v kept:/d e2e/busybox sh -c 'echo still-here > /d/f'")


def test_a_bad_mount_is_one_line_at_preview(user):
    user.set_options({"mounts": [{"path": "/nonexistent-dir"}]})
    result = user.run("scripts/machine preview")
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "options.mounts" in line]
    assert result.returncode != 0 and len(lines) == 1, result.stdout + result.stderr
    assert "machines[default].options.mounts[0].path: /nonexistent-dir is not an existing directory" in lines[0]


def test_adding_a_mount_is_a_power_cycle_that_keeps_the_volumes(user):
    project = os.path.join(user.home, "proj")
    user.set_options({"mounts": [{"path": project}]})
    preview = user.ok("scripts/machine preview")
    assert "VM power-cycled to apply mounts" in preview and "replaced" not in preview, preview
    user.ok("make up", timeout=3600)
    assert "from-host" in user.docker("""run --rm -v "$PWD":/app e2e/busybox cat /app/in""", cwd=project)
    assert user.docker("run --rm -v kept:/d e2e/busybox cat /d/f").strip() == "still-here"
    assert docblocks.run("readme-down", user.repo, user.env, user=user.name).returncode == 0
