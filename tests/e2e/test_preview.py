"""Issue 13 end to end: `scripts/machine preview` on real stacks, against the golden previews.

Each case changes a deployed two-machine stack's config (never applying it), runs the real preview and compares the
report with the golden one in tests/golden/preview, whose raw `pulumi preview --json` capture the unit tests render.
`UPDATE_GOLDEN=1` rewrites the goldens from this run instead (review the diff before committing it).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import subprocess

import pytest

from scripts.machinecli import changes as preview
from tests.e2e.conftest import ROOT, have_tools, new_stack, remove_stack, rewrite_machines

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not have_tools(), reason="needs qemu, docker and curl")]
GOLDEN = os.path.join(ROOT, "tests", "golden", "preview")
PASSWORD = f"pw-{secrets.token_hex(12)}"
# Keys of the CLI's JSON that say where in our code a resource was registered: noise in a golden file.
NOISE = ("stackTrace", "sourcePosition", "propertyDependencies", "__provider")


def machines(prefix: str) -> list[dict]:
    return [
        {"name": f"{prefix}-web", "driver": "qemu", "options": {"memory": 1024},
         "engine": {"labels": ["tier=web"]}, "tls_san": ["web.internal.test"]},
        {"name": f"{prefix}-db", "driver": "qemu", "options": {"memory": 1024}},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def deployed(e2e_env):
    prefix = f"pv{secrets.token_hex(2)}"
    stack = new_stack(e2e_env, "preview", machines(prefix))
    stack.pulumi("config", "set", "--secret", "registry_password", PASSWORD)
    try:
        stack.pulumi("up", "--yes", "--skip-preview", timeout=2400)
        yield stack, prefix
    finally:
        stack.pulumi("destroy", "--yes", timeout=900, check=False)
        remove_stack(stack)


def normalise(text: str, names: dict[str, str]) -> str:
    for real, placeholder in names.items():
        text = text.replace(real, placeholder)
    return text


def strip_noise(value):
    if isinstance(value, dict):
        return {k: strip_noise(v) for k, v in value.items() if k not in NOISE}
    if isinstance(value, list):
        return [strip_noise(v) for v in value]
    return value


def check_against_golden(stack, case: str, names: dict[str, str], tmp_path) -> dict:
    raw = tmp_path / f"{case}.raw.json"
    result = stack.machine("--stack", stack.name, "preview", "--format", "json", "--raw", str(raw))
    live = normalise(result.stdout, names)
    golden = os.path.join(GOLDEN, case)
    if os.environ.get("UPDATE_GOLDEN"):
        captured = json.loads(normalise(json.dumps(strip_noise(json.loads(raw.read_text()))), names))
        with open(f"{golden}.preview.json", "w") as f:
            json.dump(captured, f, indent=1, sort_keys=True)
            f.write("\n")
        report = preview.build(captured["document"], captured["policyEvents"], "STACK", captured["errors"],
                               captured["failed"], captured["deployed"])  # fmt: skip
        for suffix, form in (("md", "markdown"), ("txt", "text"), ("report.json", "json")):
            with open(f"{golden}.{suffix}", "w") as f:
                f.write(preview.FORMATS[form](report))
    with open(f"{golden}.report.json") as f:
        expected = json.load(f)
    got = json.loads(live)
    # The live run's resources carry its own ports and paths only in the raw document; the report must match.
    assert got == expected, f"{case}: the live preview differs from the golden one:\n{live}"
    return got


def test_previews_of_real_changes_match_the_golden_reports(deployed, e2e_env, tmp_path):
    stack, prefix = deployed
    names = {stack.name: "STACK", prefix: "m", e2e_env["DMP_STATE"]: "/state"}
    base = machines(prefix)

    def case(name: str, changed: list[dict]) -> dict:
        rewrite_machines(stack, changed)
        try:
            return check_against_golden(stack, name, names, tmp_path)
        finally:
            rewrite_machines(stack, base)

    report = case("no-change", base)
    assert [m["action"] for m in report["machines"]] == ["unchanged", "unchanged"]
    assert report["hasChanges"] is False

    labels = copy.deepcopy(base)
    labels[0]["engine"]["labels"].append("team=blue")
    web = case("engine-label", labels)["machines"][0]
    assert (web["name"], web["action"]) == ("m-web", "update")
    assert "Docker daemon restarts (engine labels changed)" in [c["text"] for c in web["consequences"]]

    san = copy.deepcopy(base)
    san[0]["tls_san"].append("web.example.test")
    texts = [c["text"] for c in case("tls-san", san)["machines"][0]["consequences"]]
    assert "server certificate reissued (tls_san changed: +web.example.test)" in texts
    assert "Docker daemon restarts (server certificate reissued)" in texts

    sized = copy.deepcopy(base)
    sized[0]["options"].update(cpus=1, memory=1536)
    web = case("cpu-memory", sized)["machines"][0]
    assert web["action"] == "update"  # QEMU applies cpus and memory with a power cycle, keeping the disk
    assert web["consequences"][0]["text"].startswith("VM power-cycled to apply cpus, memory")

    report = case("machine-removed", base[:1])
    db = next(m for m in report["machines"] if m["name"] == "m-db")
    assert db["action"] == "delete"
    assert "m-db: VM destroyed: containers and volumes on it are lost" in report["warnings"]


def test_a_new_stack_previews_as_created(e2e_env, tmp_path):
    prefix = f"pn{secrets.token_hex(2)}"
    stack = new_stack(e2e_env, "preview-new", machines(prefix)[:1])
    try:
        names = {stack.name: "STACK", prefix: "m", e2e_env["DMP_STATE"]: "/state"}
        report = check_against_golden(stack, "create", names, tmp_path)
        assert [(m["name"], m["action"]) for m in report["machines"]] == [("m-web", "create")]
        assert stack.pulumi("stack", "export").stdout.count('"urn"') == 0  # a preview creates nothing
    finally:
        remove_stack(stack)


def secret_values(stack) -> list[str]:
    values = [PASSWORD]
    outputs = stack.outputs()
    for pem in [outputs["clientKey"], *outputs["sshPrivateKeys"].values()]:
        # Any line of a key's body would betray it.
        values += [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return values


def test_no_secret_reaches_a_report_in_any_format(deployed, tmp_path):
    stack, prefix = deployed
    changed = machines(prefix)
    changed[0]["engine"]["labels"].append("secret-check=1")
    rewrite_machines(stack, changed)
    try:
        hidden = secret_values(stack)
        assert len(hidden) > 10
        for form in preview.FORMATS:
            text = stack.machine("--stack", stack.name, "preview", "--format", form).stdout
            assert "Docker daemon restarts" in text
            leaked = [v for v in hidden if v in text]
            assert leaked == [], f"{form}: {len(leaked)} secret value(s) in the report"
            assert not re.search(r"PRIVATE KEY", text)
    finally:
        rewrite_machines(stack, machines(prefix))


def test_make_preview_fails_on_a_mandatory_policy_and_only_reports_an_advisory_one(e2e_env):
    prefix = f"pp{secrets.token_hex(2)}"
    bad = {"name": f"{prefix}-bad", "driver": "qemu", "docker_context": False,
           "engine": {"install": "script", "install_url": "http://get.docker.example.test/install.sh"}}  # fmt: skip
    stack = new_stack(e2e_env, "policy", [bad])
    try:
        run = subprocess.run(["make", "-s", "preview", f"STACK={stack.name}"], cwd=ROOT, env=stack.env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode != 0
        assert f"policy mandatory docker-machine/install-url-https on {prefix}-bad ({prefix}-bad-install-docker)" in (
            run.stdout
        ), run.stdout + run.stderr
        assert f"WARNING {prefix}-bad: policy install-url-https (mandatory) failed" in run.stdout
        assert f"policy advisory docker-machine/machine-without-docker-context on {prefix}-bad" in run.stdout
        assert stack.pulumi("stack", "export").stdout.count('"urn"') == 0  # nothing was created

        # Only the advisory one left: reported, and the preview passes.
        rewrite_machines(stack, [{**bad, "engine": {"install": "packages"}}])
        run = subprocess.run(["make", "-s", "preview", f"STACK={stack.name}"], cwd=ROOT, env=stack.env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "policy advisory docker-machine/machine-without-docker-context" in run.stdout
        assert "mandatory" not in run.stdout
    finally:
        remove_stack(stack)
