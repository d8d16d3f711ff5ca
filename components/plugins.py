"""The Pulumi resource plugins the cloud drivers need, at the versions their pip packages (requirements.txt) pin
(``python -m components.config plugins STACK_FILE`` lists those a stack file's machines lack)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil


def plugin_of(package: str) -> tuple[str, str] | None:
    """(name, version) from a provider SDK's pulumi-plugin.json, without importing the SDK (seconds for a cloud)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        with open(os.path.join(spec.submodule_search_locations[0], "pulumi-plugin.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta.get("name", ""), meta.get("version", "")


def plugin_installed(name: str, version: str) -> bool:
    """Where the engine looks: the plugin cache at exactly this version, or a ``pulumi-resource-NAME`` on PATH."""
    home = os.environ.get("PULUMI_HOME") or os.path.join(os.path.expanduser("~"), ".pulumi")
    binary = os.path.join(home, "plugins", f"resource-{name}-v{version}", f"pulumi-resource-{name}")
    partial = os.path.join(home, "plugins", f"resource-{name}-v{version}.partial")
    cached = os.path.isfile(binary) and not os.path.exists(partial)
    return cached or shutil.which(f"pulumi-resource-{name}") is not None


def missing_plugin(name: str, version: str) -> str | None:
    """The one line a user needs when the plugin is not there, else None."""
    if plugin_installed(name, version):
        return None
    return (
        f"the Pulumi plugin pulumi-resource-{name} v{version} (the version requirements.txt pins) is not installed; "
        f"install it with: scripts/pulumi plugin install resource {name} {version}"
    )
