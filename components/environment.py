"""What a child process of ours inherits: a short allow-list of the environment, so that the secrets a user may keep
there (PULUMI_CONFIG_PASSPHRASE, a backend URL with its password, cloud credentials) never reach ssh, docker or a
daemon of ours, none of which needs them."""

from __future__ import annotations

import os

# Enough to find programs, write files as the user and speak the user's language.
ALLOWED = ("PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def minimal(*also: str) -> dict[str, str]:
    """The allow-listed variables that are set, and ``also`` (e.g. DOCKER_CONFIG for docker)."""
    env = {key: os.environ[key] for key in (*ALLOWED, *also) if key in os.environ}
    env.setdefault("PATH", os.defpath)
    return env
