"""Issue 20: a machine's shape picks its template (never another shape's), and a damaged template means a cold boot
with one notice, never a broken machine. In a cache of its own (the images shared), so the suite's templates stay."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.e2e.conftest import have_tools, new_stack, record_figure, remove_stack, rewrite_machines

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl (make setup)")]

MEMORY = 1536  # a shape no other test uses


def machine(name: str) -> dict:
    return {"name": name, "options": {"memory": MEMORY, "mounts": []}, "engine": {"install": "packages"},
            "docker_context": False}  # fmt: skip


@pytest.fixture(scope="module")
def stack(e2e_env, tmp_path_factory):
    cache = tmp_path_factory.mktemp("template-cache")
    real = e2e_env.get("DMP_CACHE") or os.path.expanduser("~/.cache/docker-machine-pulumi")
    for shared in ("images", "tools", "toolchain"):
        if os.path.exists(os.path.join(real, shared)):
            os.symlink(os.path.join(real, shared), cache / shared)
    env = dict(e2e_env, DMP_CACHE=str(cache))
    made = new_stack(env, "templates", [machine("shape-a")])
    try:
        yield made, cache
        made.pulumi("destroy", "--yes", timeout=900)
    finally:
        made.pulumi("destroy", "--yes", check=False, timeout=900)
        remove_stack(made)
        shutil.rmtree(cache / "templates", ignore_errors=True)


def vm_outputs(stack, name: str) -> dict:
    state = json.loads(stack.pulumi("stack", "export").stdout)
    (vm,) = [r for r in state["deployment"]["resources"] if r["urn"].endswith(f"::{name}-vm")]
    return vm["outputs"]


def test_a_machine_of_another_shape_gets_a_template_of_its_own(stack):
    made, cache = stack
    made.pulumi("up", "--yes", "--skip-preview", timeout=2400)
    template = vm_outputs(made, "shape-a")["template"]
    assert template, "the machine was not resumed from a template"
    meta = json.load(open(cache / "templates" / template / "meta.json"))
    assert meta["shape"]["memory"] == MEMORY and os.listdir(cache / "templates") != []
    total = made.machine("--stack", made.name, "ssh", "shape-a", "grep MemTotal /proc/meminfo").stdout.split()[1]
    assert MEMORY * 0.85 < int(total) / 1024 <= MEMORY, total
    record_figure("template: one-time cost (boot, cloud-init, Docker's first start, save)", f"{meta['seconds']} s")


def test_a_truncated_template_means_a_cold_boot_with_one_notice(stack):
    made, cache = stack
    template = vm_outputs(made, "shape-a")["template"]
    state = cache / "templates" / template / "state"
    whole = os.path.getsize(state)
    with open(state, "r+b") as f:
        f.truncate(whole // 2)
    rewrite_machines(made, [machine("shape-a"), machine("shape-b")])
    out = made.pulumi("up", "--yes", "--skip-preview", timeout=2400)
    text = out.stdout + out.stderr
    # Pulumi repeats a line in its progress and its diagnostics: one notice, one distinct line.
    notices = {line[line.index("machine shape-b:"):].strip() for line in text.splitlines() if "is damaged" in line}
    assert notices == {f"machine shape-b: template {template} is damaged (state is {whole // 2} bytes, not {whole}): "
                       "cold boot"}, text[-3000:]  # fmt: skip
    assert not state.exists()  # retired: the next machine of this shape makes a new template
    assert vm_outputs(made, "shape-b").get("template") is None  # booted cold
    version = made.machine("--stack", made.name, "ssh", "shape-b", "sudo docker version --format '{{.Server.Version}}'")
    assert version.stdout.strip(), version.stderr
