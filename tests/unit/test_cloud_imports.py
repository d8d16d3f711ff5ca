"""A local stack never imports a cloud SDK: drivers are imported by name, only for the drivers a stack uses.

Runs in a fresh interpreter (this test process has long imported the SDKs for the driver tests): the real
``__main__.py`` previews a qemu-only stack under Pulumi mocks; then an AWS machine's options are validated, which
imports the AWS driver but not its SDK (a driver imports its SDK only to register resources, so the registry can
read every driver's declarations cheaply); then, as a control that the check sees an SDK at all, the AWS machine is
registered, which imports the SDK. The names checked are the ones the driver modules really import (read from
their source).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

from tests.unit.conftest import ROOT

CLOUD_SDKS = ("pulumi_aws", "pulumi_azure_native", "pulumi_digitalocean")
CLOUD_DRIVERS = ("components.drivers.aws", "components.drivers.azure", "components.drivers.digitalocean")

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    SDKS, DRIVERS = json.loads(sys.argv[2]), json.loads(sys.argv[3])

    def loaded():
        return {
            "sdks": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in SDKS}),
            "drivers": sorted(m for m in sys.modules if m in DRIVERS),
        }

    start = time.perf_counter()
    from tests.unit.conftest import run_program
    program = run_program([{"name": "default", "driver": "qemu"}], stack="local", preview=True)
    local = {**loaded(), "seconds": round(time.perf_counter() - start, 3),
             "types": sorted({r.typ for r in program.resources})}

    from components import config
    config.parse([{"name": "a", "driver": "aws"}])
    parsed = loaded()
    from tests.unit.test_driver_aws import run
    run()
    print(json.dumps({"local": local, "aws_parsed": parsed, "aws_registered": loaded()}))
    """
)


def test_a_local_stack_imports_no_cloud_sdk(tmp_path):
    env = {**os.environ, "DMP_STATE": str(tmp_path / "state"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, ROOT, json.dumps(CLOUD_SDKS), json.dumps(CLOUD_DRIVERS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    local = report["local"]
    # the program really ran: the QEMU VM and the provisioning stages were registered
    assert "pulumi-python:dynamic/qemu:Vm" in local["types"]
    assert "pulumi-python:dynamic/remote:Command" in local["types"]
    assert local["sdks"] == [], f"a local stack imported {local['sdks']}"
    assert local["drivers"] == [], f"a local stack imported {local['drivers']}"
    assert report["aws_parsed"] == {"sdks": [], "drivers": ["components.drivers.aws"]}
    # control: the same check sees the SDK once a cloud machine is registered, and only that one
    assert report["aws_registered"]["sdks"] == ["pulumi_aws"]


def test_each_cloud_sdk_is_imported_by_its_driver_module_only():
    importers: dict[str, set[str]] = {}
    for directory, _, files in os.walk(os.path.join(ROOT, "components")):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(directory, file)
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] in CLOUD_SDKS:
                        importers.setdefault(name.split(".")[0], set()).add(os.path.relpath(path, ROOT))
    assert importers == {
        "pulumi_aws": {"components/drivers/aws.py"},
        "pulumi_azure_native": {"components/drivers/azure.py"},
        "pulumi_digitalocean": {"components/drivers/digitalocean.py"},
    }
