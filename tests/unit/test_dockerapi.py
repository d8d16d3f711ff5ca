"""The API check: what it contacts and when."""

from components.steps import dockerapi

PROPS = {
    "host": "127.0.0.1", "port": 9, "ca_cert": "CA", "client_cert": "C", "client_key": "K",
    "configuration": "abc", "running": True, "timeout": 1,
}  # fmt: skip


def test_a_stopped_machine_is_not_contacted_and_keeps_the_verified_version():
    olds = {**PROPS, "server_version": "20.10.24", "api_version": "1.41"}
    provider = dockerapi._CheckProvider()
    # Port 9 with bogus certificates would fail at once if anything were contacted.
    outs = provider.update("id", olds, {**PROPS, "running": False}).outs
    assert outs["server_version"] == "20.10.24" and outs["running"] is False


def test_starting_again_is_a_change_that_rechecks():
    provider = dockerapi._CheckProvider()
    stopped = {**PROPS, "running": False}
    assert provider.diff("id", stopped, PROPS).changes
    assert not provider.diff("id", PROPS, dict(PROPS)).changes
