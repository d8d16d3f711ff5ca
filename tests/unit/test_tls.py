"""docker-machine's TLS rules (docs/tls.md), the dynamic providers' create/diff, and a real handshake."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import re
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from components.steps import dockerapi, tls
from tests.fakes.http import send

OWNER = "alice"
MACHINE = "default"


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


@pytest.fixture(scope="module")
def pki():
    """One CA, client and server certificate, generated once; with the clock read around generation."""
    before = utcnow()
    ca = tls.new_ca(OWNER)
    client = tls.new_client_cert(ca, f"{OWNER}.<bootstrap>")
    sans = tls.server_sans("127.0.0.1", ["docker.example.test", "10.1.2.3", "::1"])
    server = tls.new_server_cert(ca, f"{OWNER}.{MACHINE}", sans)
    after = utcnow()
    return {"ca": ca, "client": client, "server": server, "sans": sans, "before": before, "after": after}


@pytest.fixture(scope="module")
def other_pki():
    """A second, unrelated CA with the same Organization (so only the signature tells them apart)."""
    ca = tls.new_ca(OWNER)
    return {
        "ca": ca,
        "client": tls.new_client_cert(ca, f"{OWNER}.<bootstrap>"),
        "server": tls.new_server_cert(ca, f"{OWNER}.{MACHINE}", tls.server_sans("127.0.0.1", [])),
    }


def certs(pki):
    return {
        "ca": load(pki["ca"].cert_pem),
        "client": load(pki["client"].cert_pem),
        "server": load(pki["server"].cert_pem),
    }


# --- keys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ca", "client", "server"])
def test_keys_are_rsa_2048_pkcs1_pem(pki, which):
    pair = pki[which]
    assert pair.key_pem.startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    assert pair.key_pem.rstrip().endswith("-----END RSA PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pair.key_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537
    # the certificate carries this key's public half
    cert_key = load(pair.cert_pem).public_key()
    assert cert_key.public_numbers() == key.public_key().public_numbers()


def test_every_certificate_has_its_own_key(pki):
    keys = {pki[w].key_pem for w in ("ca", "client", "server")}
    assert len(keys) == 3


# --- subjects -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "org"), [("ca", OWNER), ("client", f"{OWNER}.<bootstrap>"), ("server", f"{OWNER}.{MACHINE}")]
)
def test_subject_is_organization_only(pki, which, org):
    cert = certs(pki)[which]
    attributes = [(a.oid, a.value) for a in cert.subject]
    assert attributes == [(NameOID.ORGANIZATION_NAME, org)]
    assert not cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)


def test_issuers(pki):
    c = certs(pki)
    assert c["ca"].issuer == c["ca"].subject  # self-signed
    assert c["client"].issuer == c["ca"].subject
    assert c["server"].issuer == c["ca"].subject


# --- validity and serial ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ca", "client", "server"])
def test_validity_window(pki, which):
    cert = certs(pki)[which]
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    # NotBefore = now truncated to the minute, minus 5 minutes
    candidates = {
        t.replace(second=0, microsecond=0) - datetime.timedelta(minutes=5) for t in (pki["before"], pki["after"])
    }
    assert nb in candidates
    assert nb.second == 0 and nb.microsecond == 0
    # NotAfter = NotBefore + 1080 days
    assert na - nb == datetime.timedelta(days=1080)


def test_serials_are_random_128_bit(pki, other_pki):
    serials = [load(p[w].cert_pem).serial_number for p in (pki, other_pki) for w in ("ca", "client", "server")]
    assert all(0 < s < 2**128 for s in serials)
    assert len(set(serials)) == len(serials)
    # six uniformly random 128-bit values all below 2**120 would happen with probability 2**-48
    assert max(s.bit_length() for s in serials) > 120


def test_serial_of_is_the_hex_serial(pki):
    cert = certs(pki)["server"]
    assert int(tls.serial_of(pki["server"].cert_pem), 16) == cert.serial_number


# --- extensions -------------------------------------------------------------------------------------------


def key_usage_flags(cert: x509.Certificate) -> set[str]:
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign"]  # fmt: skip
    flags = {n for n in names if getattr(ku, n)}
    if ku.key_agreement:
        flags |= {n for n in ("encipher_only", "decipher_only") if getattr(ku, n)}
    return flags


def test_ca_extensions(pki):
    cert = certs(pki)["ca"]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True and bc.value.path_length is None
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert key_usage_flags(cert) == {"digital_signature", "key_encipherment", "key_agreement", "key_cert_sign"}
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def assert_leaf(cert: x509.Certificate, usages: set[str], purpose: x509.ObjectIdentifier) -> None:
    """Not a CA, critical key usage with exactly ``usages``, a non-critical extended key usage of ``purpose``."""
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert key_usage_flags(cert) == usages
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical and list(eku.value) == [purpose]


def test_client_extensions(pki):
    cert = certs(pki)["client"]
    assert_leaf(cert, {"digital_signature"}, ExtendedKeyUsageOID.CLIENT_AUTH)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_server_extensions(pki):
    cert = certs(pki)["server"]
    assert_leaf(cert, {"digital_signature", "key_encipherment", "key_agreement"}, ExtendedKeyUsageOID.SERVER_AUTH)
    assert not cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).critical


@pytest.mark.parametrize("which", ["ca", "client", "server"])
def test_signed_with_sha256(pki, which):
    assert isinstance(certs(pki)[which].signature_hash_algorithm, hashes.SHA256)


# --- SANs ----------------------------------------------------------------------------------------------------


def test_server_sans_order_and_dedup():
    # extra SANs first, then the machine address, then localhost; duplicates dropped keeping the first
    assert tls.server_sans("192.168.99.100", []) == ["192.168.99.100", "localhost"]
    assert tls.server_sans("192.168.99.100", ["docker.example.test", "10.0.0.1"]) == [
        "docker.example.test", "10.0.0.1", "192.168.99.100", "localhost",
    ]  # fmt: skip
    assert tls.server_sans("10.0.0.1", ["localhost", "10.0.0.1", "a.test", "a.test"]) == [
        "localhost", "10.0.0.1", "a.test",
    ]  # fmt: skip
    assert tls.server_sans("", ["a.test"]) == ["a.test", "localhost"]


def test_server_cert_sans_ip_vs_dns_in_order(pki):
    san = certs(pki)["server"].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert pki["sans"] == ["docker.example.test", "10.1.2.3", "::1", "127.0.0.1", "localhost"]
    rendered = [(type(g).__name__, str(g.value)) for g in san]
    assert rendered == [
        ("DNSName", "docker.example.test"),
        ("IPAddress", "10.1.2.3"),
        ("IPAddress", "::1"),
        ("IPAddress", "127.0.0.1"),
        ("DNSName", "localhost"),
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1"),
    ]  # fmt: skip
    # the machine name is not a SAN (docker-machine)
    assert MACHINE not in san.get_values_for_type(x509.DNSName)


# --- chain ---------------------------------------------------------------------------------------------------


def test_certificates_verify_against_the_ca(pki):
    c = certs(pki)
    c["ca"].verify_directly_issued_by(c["ca"])
    c["server"].verify_directly_issued_by(c["ca"])
    c["client"].verify_directly_issued_by(c["ca"])


def test_certificates_do_not_verify_against_another_ca(pki, other_pki):
    other_ca = load(other_pki["ca"].cert_pem)
    for which in ("server", "client"):
        with pytest.raises(InvalidSignature):
            certs(pki)[which].verify_directly_issued_by(other_ca)


# --- ssh keys ------------------------------------------------------------------------------------------------


def test_ssh_key_pair():
    private, public = tls.new_ssh_key()
    key = serialization.load_ssh_private_key(private.encode(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert public.startswith("ssh-ed25519 ")
    ours = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert public == ours.decode()
    assert tls.new_ssh_key()[1] != public


# --- dynamic providers, called as plain Python -----------------------------------------------------------------


@pytest.fixture(scope="module")
def authority_outs():
    props = {"owner": OWNER, "rotation": "", "ca_cert": None, "ca_key": None, "client_cert": None,
             "client_key": None, "ca_serial": None}  # fmt: skip
    result = tls._AuthorityProvider().create(props)
    return result


def test_authority_create(authority_outs):
    outs = authority_outs.outs
    ca, client = load(outs["ca_cert"]), load(outs["client_cert"])
    assert ca.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == OWNER
    assert client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == f"{OWNER}.<bootstrap>"
    client.verify_directly_issued_by(ca)
    assert outs["ca_key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert outs["client_key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert int(outs["ca_serial"], 16) == ca.serial_number
    assert authority_outs.id == f"ca-{outs['ca_serial']}"
    assert outs["owner"] == OWNER and outs["rotation"] == ""


def test_authority_never_regenerates_on_owner_change(authority_outs):
    olds = authority_outs.outs
    provider = tls._AuthorityProvider()
    assert not provider.diff("id", olds, {**olds, "owner": "bob"}).changes
    assert not provider.diff("id", olds, {"owner": OWNER, "rotation": ""}).changes
    rotated = provider.diff("id", olds, {"owner": OWNER, "rotation": "2025-01"})
    assert rotated.changes and rotated.replaces == ["rotation"]


@pytest.fixture(scope="module")
def server_props(authority_outs):
    outs = authority_outs.outs
    return {
        "ca_cert": outs["ca_cert"],
        "ca_key": outs["ca_key"],
        "owner": f"{OWNER}.{MACHINE}",
        "sans": ["192.168.124.10", "localhost"],
        "rotation": "",
        "cert": None,
        "key": None,
        "serial": None,
    }


def test_server_certificate_create(server_props):
    result = tls._ServerCertProvider().create(server_props)
    outs = result.outs
    cert, ca = load(outs["cert"]), load(server_props["ca_cert"])
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == f"{OWNER}.{MACHINE}"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.124.10")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert int(outs["serial"], 16) == cert.serial_number
    assert result.id == f"server-{outs['serial']}"
    key = serialization.load_pem_private_key(outs["key"].encode(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


@pytest.mark.parametrize(
    ("change", "replaces"),
    [
        ({"sans": ["192.168.124.11", "localhost"]}, ["sans"]),
        ({"sans": ["docker.example.test", "192.168.124.10", "localhost"]}, ["sans"]),
        ({"ca_cert": "-----BEGIN CERTIFICATE-----\nnew CA\n-----END CERTIFICATE-----\n"}, ["ca_cert"]),
        ({"rotation": "1"}, ["rotation"]),
        ({"owner": "bob.default"}, []),
        ({}, []),
    ],
)
def test_server_certificate_diff(server_props, change, replaces):
    olds = {**server_props, "cert": "C", "key": "K", "serial": "1"}
    news = {**server_props, **change}
    diff = tls._ServerCertProvider().diff("id", olds, news)
    assert diff.replaces == replaces
    assert bool(diff.changes) == bool(replaces)


def test_ssh_key_provider():
    provider = tls._SshKeyProvider()
    result = provider.create({"private_key": None, "public_key": None})
    assert result.outs["public_key"].startswith("ssh-ed25519 ")
    key = serialization.load_ssh_private_key(result.outs["private_key"].encode(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert not provider.diff("id", result.outs, {"private_key": None, "public_key": None}).changes


# --- a real mutual-TLS handshake ----------------------------------------------------------------------------------


class FakeDocker(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self):  # noqa: N802 - http.server API
        path = re.sub(r"^/v[0-9.]+/", "/", self.path)  # the daemon serves every path versioned too
        self.server.hits.append(path)
        if path == "/_ping":
            body = b"OK"
        elif path == "/version":
            body = json.dumps({"Version": "24.0.7", "ApiVersion": "1.43", "Os": "linux", "Arch": "amd64"}).encode()
        else:
            self.send_error(404)
            return
        send(self, body)

    def log_message(self, *args):
        pass


@pytest.fixture
def docker_server(tmp_path):
    """Start a fake Docker API on 127.0.0.1 requiring client certificates; yields a starter."""
    servers = []

    def start(ca_pem: str, server_pair: tls.KeyPair):
        cert, key = tmp_path / "server.pem", tmp_path / "server-key.pem"
        cert.write_text(server_pair.cert_pem)
        key.write_text(server_pair.key_pem)
        os.chmod(key, 0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cadata=ca_pem)
        context.verify_mode = ssl.CERT_REQUIRED
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeDocker)
        server.hits = []
        server.handle_error = lambda request, address: None  # failed handshakes are expected here
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        server.socket.settimeout(5)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_handshake_with_the_client_certificate(pki, docker_server):
    server = docker_server(pki["ca"].cert_pem, pki["server"])
    port = server.server_address[1]
    client = (pki["ca"].cert_pem, pki["client"].cert_pem, pki["client"].key_pem)
    assert dockerapi.version("127.0.0.1", port, client, timeout=5)["Version"] == "24.0.7"
    # localhost is a SAN too
    assert dockerapi.version("localhost", port, client, timeout=5)["Os"] == "linux"
    version = dockerapi.wait_for_docker("127.0.0.1", port, client, timeout=5)
    assert version["Version"] == "24.0.7"
    assert server.hits == ["/_ping", "/version"] * 3


def test_the_client_material_never_touches_a_disk(pki, docker_server, tmp_path, monkeypatch):
    """The SDK reads the certificate and key from anonymous memory files: no temporary file is made or left."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    server = docker_server(pki["ca"].cert_pem, pki["server"])
    dockerapi.version("127.0.0.1", server.server_address[1], (pki["ca"].cert_pem, pki["client"].cert_pem,
                                                             pki["client"].key_pem), timeout=5)  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["server-key.pem", "server.pem"]  # the fake server's own


def test_handshake_fails_with_a_client_certificate_from_another_ca(pki, other_pki, docker_server):
    server = docker_server(pki["ca"].cert_pem, pki["server"])
    client = (pki["ca"].cert_pem, other_pki["client"].cert_pem, other_pki["client"].key_pem)
    with pytest.raises(dockerapi.ApiError) as failed:
        dockerapi.version("127.0.0.1", server.server_address[1], client, timeout=5)
    assert isinstance(failed.value.cause, OSError)  # ssl.SSLError / ConnectionResetError, both OSError
    assert server.hits == []


def test_client_rejects_a_server_certificate_from_another_ca(pki, other_pki, docker_server):
    server = docker_server(other_pki["ca"].cert_pem, other_pki["server"])
    client = (pki["ca"].cert_pem, pki["client"].cert_pem, pki["client"].key_pem)
    with pytest.raises(dockerapi.ApiError) as failed:
        dockerapi.version("127.0.0.1", server.server_address[1], client, timeout=5)
    assert isinstance(failed.value.cause, ssl.SSLCertVerificationError) and dockerapi.is_cert_error(failed.value.cause)
    assert str(failed.value).startswith("x509: ")
    assert server.hits == []


def test_a_ca_in_the_environment_does_not_replace_the_machines(pki, docker_server, monkeypatch, tmp_path):
    """REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set on CI machines) must not take the place of the stack's CA."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(tls.new_ca("elsewhere").cert_pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bundle))
    server = docker_server(pki["ca"].cert_pem, pki["server"])
    client = (pki["ca"].cert_pem, pki["client"].cert_pem, pki["client"].key_pem)
    assert dockerapi.version("127.0.0.1", server.server_address[1], client, timeout=5)["Version"] == "24.0.7"


def test_wait_for_docker_times_out_with_the_last_error(pki, other_pki, docker_server):
    server = docker_server(pki["ca"].cert_pem, pki["server"])
    client = (other_pki["ca"].cert_pem, pki["client"].cert_pem, pki["client"].key_pem)
    with pytest.raises(dockerapi.ApiError, match=r"did not answer on https://127\.0\.0\.1:\d+ within 0s: x509"):
        dockerapi.wait_for_docker("127.0.0.1", server.server_address[1], client, timeout=0)


# --- renewal before expiry (time moved, nothing waited for) -----------------------------------------------------------


def test_a_server_certificate_with_10_days_left_is_renewed_by_the_next_up(server_props, monkeypatch):
    provider = tls._ServerCertProvider()
    outs = provider.create(server_props).outs
    assert not provider.diff("id", outs, dict(server_props)).changes  # a fresh certificate: nothing to do
    expires = tls.expires(outs["cert"])
    assert outs["expires"] == expires.isoformat()
    monkeypatch.setattr(tls, "now", lambda: expires - datetime.timedelta(days=10))
    assert tls.days(tls.left(outs["expires"])) == "expires in 10 days"
    diff = provider.diff("id", outs, dict(server_props))
    assert diff.changes and diff.replaces == ["cert"]  # reissued, and the tls and daemon-config steps follow
    renewed = provider.create(server_props).outs
    assert tls.expires(renewed["cert"]) > expires + datetime.timedelta(days=1000)  # a full term from now
    assert renewed["serial"] != outs["serial"]


def test_a_client_certificate_due_is_renewed_from_the_same_ca_and_a_ca_due_is_replaced(monkeypatch, capsys):
    provider = tls._AuthorityProvider()
    props = {"owner": OWNER, "rotation": ""}
    outs = provider.create(props).outs
    assert not provider.diff("id", outs, dict(props)).changes
    due = tls.expires(outs["client_cert"]) - datetime.timedelta(days=5)
    monkeypatch.setattr(tls, "now", lambda: due)
    # The CA and the client certificate were made together: both are due; the CA is replaced (a clear line says
    # every client needs the new client certificate).
    diff = provider.diff("id", outs, dict(props))
    assert diff.changes and diff.replaces == ["rotation"]
    assert "the stack's CA expires in 5 days: up issues a new one, and every client needs" in capsys.readouterr().err
    # A client certificate due under a CA that is not: a new one from the same CA, in place.
    young_ca = {**outs, "client_cert": tls.new_client_cert(tls.KeyPair(outs["ca_cert"], outs["ca_key"]), "x").cert_pem}
    monkeypatch.setattr(tls, "now", lambda: tls.expires(young_ca["client_cert"]) - datetime.timedelta(days=5))
    monkeypatch.setattr(tls, "expires", lambda pem: (tls.now() + datetime.timedelta(days=400)) if pem == outs["ca_cert"]
                        else x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc)  # fmt: skip
    diff = provider.diff("id", young_ca, dict(props))
    assert diff.changes and not diff.replaces
    renewed = provider.update("id", young_ca, dict(props)).outs
    assert renewed["ca_cert"] == outs["ca_cert"] and renewed["client_cert"] != young_ca["client_cert"]
    load(renewed["client_cert"]).verify_directly_issued_by(load(outs["ca_cert"]))
