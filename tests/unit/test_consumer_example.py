"""examples/consumer's Docker client: the machine's CA verifies the daemon, whatever CA bundle the environment
names (REQUESTS_CA_BUNDLE made requests drop the CA it was given)."""

from __future__ import annotations

import os
import sys

import pytest

from tests.fakes.docker import make_pki

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "consumer"))
import container  # noqa: E402


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_machines_ca_verifies_the_daemon_whatever_bundle_the_environment_names(pki, docker, monkeypatch,
                                                                                   tmp_path, variable):  # fmt: skip
    other_ca = make_pki().ca_cert
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(other_ca)
    monkeypatch.setenv(variable, str(bundle))
    props = {"url": f"tcp://127.0.0.1:{docker.port}", "ca_cert": pki.ca_cert, "client_cert": pki.client_cert,
             "client_key": pki.client_key}  # fmt: skip
    client, tmp = container._client(props)
    try:
        assert client.ping() is True
    finally:
        client.close()
