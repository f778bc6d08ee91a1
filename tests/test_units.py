"""Sans-IO layers, tested without sockets: option parsing, the DER reader,
the notification block, the SNI table, TLS settings from the environment.

Rules: no network; certificates from trustme written under tmp_path.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from trio_s6tls import _der, apply_variables, is_tls_variable, parse_identity
from trio_s6tls._errors import EXIT_CONFIG, EXIT_SYSTEM, EXIT_USAGE, Fatal, UsageError
from trio_s6tls._handshake_info import decode_notification, encode_notification
from trio_s6tls._tlsconfig import (
    SniTable,
    TLSOptions,
    client_context,
    server_context,
    valid_sni_name,
)
from trio_s6tls.programs import _options
from trio_s6tls.programs._cli import parse_options

# -- option parsing ---------------------------------------------------------


def test_bundled_attached_and_separate_arguments() -> None:
    parsed = parse_options(
        ["-SJy", "-v2", "-K", "5000", "-k", "host", "3", "4"], _options.CLIENT_TLS
    )
    assert parsed.values == {
        "close_notify": True,
        "enforce_close_notify": True,
        "client_cert": 1,
        "verbosity": 2,
        "handshake_timeout_ms": 5000,
        "servername": "host",
    }
    assert parsed.operands == ["3", "4"]


def test_later_options_win_and_options_stop_at_first_operand() -> None:
    parsed = parse_options(["-S", "-s", "3", "-S", "4"], _options.CLIENT_TLS)
    assert parsed.values == {"close_notify": False}
    assert parsed.operands == ["3", "-S", "4"]


def test_double_dash_and_long_forms() -> None:
    parsed = parse_options(
        ["--close-notify", "--sni-level=2", "--mandatory-client-cert", "--", "-1", "2"],
        _options.SERVER_TLS,
    )
    assert parsed.values == {"close_notify": True, "sni_level": 2, "client_cert": 2}
    assert parsed.operands == ["-1", "2"]


@pytest.mark.parametrize("argv", [["-x"], ["-v"], ["-v", "two"], ["-K", "-5"], ["--bogus"]])
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_options(argv, _options.CLIENT_TLS)


def test_help_and_version_flags() -> None:
    parsed = parse_options(["--help"], _options.CLIENT_TLS)
    assert parsed.help and not parsed.version


# -- notification block -----------------------------------------------------


def test_notification_block_format() -> None:
    block = encode_notification(
        {
            "SSL_PROTOCOL": "TLSv1.3",
            "SSL_CIPHER": "TLS_AES_256_GCM_SHA384",
            "SSL_TLS_SNI_SERVERNAME": None,
        }
    )
    assert (
        block
        == b"SSL_PROTOCOL=TLSv1.3\0SSL_CIPHER=TLS_AES_256_GCM_SHA384\0SSL_TLS_SNI_SERVERNAME\0\0"
    )
    assert decode_notification(block) == {
        "SSL_PROTOCOL": "TLSv1.3",
        "SSL_CIPHER": "TLS_AES_256_GCM_SHA384",
        "SSL_TLS_SNI_SERVERNAME": None,
    }
    assert decode_notification(b"\0") == {}


@pytest.mark.parametrize("block", [b"", b"SSL_PROTOCOL=x\0", b"A=1\0\0\0", b"A"])
def test_incomplete_notification_is_rejected(block: bytes) -> None:
    with pytest.raises(ValueError):
        decode_notification(block)


def test_values_with_equals_signs_survive() -> None:
    variables = {"SSL_PEER_CERT_SUBJECT": "CN=a\\=b, O=x"}
    assert decode_notification(encode_notification(variables)) == variables


def test_apply_variables_sets_and_unsets() -> None:
    env = {"SSL_CIPHER": "old", "KEEP": "1"}
    apply_variables(env, {"SSL_CIPHER": None, "SSL_PROTOCOL": "TLSv1.2"})
    assert env == {"KEEP": "1", "SSL_PROTOCOL": "TLSv1.2"}


# -- DER ----------------------------------------------------------------------


def _der_cert(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def test_subject_in_spec_order_with_escapes() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert(
        "x.example", common_name="a,b=c+d", organization_name="O<1>", organization_unit_name="#u\\"
    )
    subject = _der.certificate_subject(_der_cert(cert))
    assert subject == "O=O\\<1\\>, OU=\\#u\\\\, CN=a\\,b\\=c\\+d"


def test_der_key_labels(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = serialization.Encoding.DER
    none = serialization.NoEncryption()
    pkcs8 = ec_key.private_bytes(der, serialization.PrivateFormat.PKCS8, none)
    sec1 = ec_key.private_bytes(der, serialization.PrivateFormat.TraditionalOpenSSL, none)
    pkcs1 = rsa_key.private_bytes(der, serialization.PrivateFormat.TraditionalOpenSSL, none)
    assert _der.private_key_pem_label(pkcs8) == "PRIVATE KEY"
    assert _der.private_key_pem_label(sec1) == "EC PRIVATE KEY"
    assert _der.private_key_pem_label(pkcs1) == "RSA PRIVATE KEY"
    with pytest.raises(ValueError):
        _der.private_key_pem_label(b"\x30\x03\x02\x01")


# -- SNI ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("example.com", True),
        ("*.example.com", True),
        ("*.com", False),
        ("a.*.com", False),
        ("*", False),
        ("a..b", False),
    ],
)
def test_valid_sni_names(name: str, valid: bool) -> None:
    assert valid_sni_name(name) is valid


def test_sni_table_exact_beats_wildcard_and_wildcard_is_one_label() -> None:
    wild, exact = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    table = SniTable()
    table.add("*.example.com", wild)
    table.add("www.example.com", exact)
    assert table.lookup("a.example.com") is wild
    assert table.lookup("WWW.Example.com") is exact
    assert table.lookup("a.b.example.com") is None
    assert table.lookup("example.com") is None


# -- TLS settings from the environment ------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("units")
    ca = trustme.CA()
    other = trustme.CA()
    leaf = ca.issue_cert("localhost")
    paths = {
        "ca": directory / "ca.pem",
        "ca_der": directory / "anything-at-all",
        "cert": directory / "cert.pem",
        "key": directory / "key.pem",
        "other_key": directory / "other.pem",
        "cert_der": directory / "cert.der",
        "key_der": directory / "key.der",
        "garbage": directory / "garbage.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    paths["ca_der"].write_bytes(ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode()))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    other.issue_cert("localhost").private_key_pem.write_to_path(str(paths["other_key"]))
    paths["cert_der"].write_bytes(_der_cert(leaf))
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    paths["key_der"].write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["garbage"].write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    )
    cadir = directory / "cadir"
    cadir.mkdir()
    (cadir / "README").write_text("not a certificate\n")
    (cadir / "my root").write_bytes(paths["ca_der"].read_bytes())
    empty = directory / "empty"
    empty.mkdir()
    return {k: str(v) for k, v in paths.items()} | {"cadir": str(cadir), "empty": str(empty)}


def test_server_context_from_der_files(files: dict[str, str]) -> None:
    context = server_context(
        {"CERTFILE": files["cert_der"], "KEYFILE": files["key_der"]}, TLSOptions()
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    names = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all(n.startswith("ECDHE") and ("GCM" in n or "CHACHA" in n) for n in names)


def test_cadir_with_arbitrary_names_and_der(files: dict[str, str]) -> None:
    context = client_context({"CADIR": files["cadir"]}, TLSOptions())
    assert context.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize(
    ("env", "code", "fragment"),
    [
        ({}, EXIT_USAGE, "CADIR or CAFILE not set"),
        ({"CADIR": "EMPTY"}, EXIT_CONFIG, "no trust anchor"),
        ({"CAFILE": "GARBAGE"}, EXIT_CONFIG, "unable to load trust anchors"),
        ({"CAFILE": "/nonexistent/ca.pem"}, EXIT_SYSTEM, "unable to read"),
        ({"CADIR": "/nonexistent"}, EXIT_SYSTEM, "unable to read CADIR"),
    ],
)
def test_client_configuration_errors(
    files: dict[str, str], env: dict[str, str], code: int, fragment: str
) -> None:
    env = {k: files.get(v.lower(), v) for k, v in env.items()}
    with pytest.raises(Fatal) as caught:
        client_context(env, TLSOptions())
    assert caught.value.exit_code == code
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("env", "options", "code", "fragment"),
    [
        ({}, TLSOptions(), EXIT_USAGE, "CERTFILE not set"),
        ({"CERTFILE": "cert"}, TLSOptions(), EXIT_USAGE, "KEYFILE not set"),
        ({"CERTFILE": "cert", "KEYFILE": "other_key"}, TLSOptions(), EXIT_CONFIG, "does not match"),
        (
            {"CERTFILE": "cert", "KEYFILE": "/nonexistent"},
            TLSOptions(),
            EXIT_CONFIG,  # a server's keypair: 96 even when unreadable, as in C
            "unable to read",
        ),
        (
            {"CERTFILE": "garbage", "KEYFILE": "key"},
            TLSOptions(),
            EXIT_CONFIG,
            "unable to load keypair",
        ),
        ({"KEYFILE:a.example": "key"}, TLSOptions(sni_level=2), EXIT_CONFIG, "CERTFILE:a.example"),
        (
            {"KEYFILE:*.com": "key", "CERTFILE:*.com": "cert"},
            TLSOptions(sni_level=1),
            EXIT_CONFIG,
            "invalid SNI",
        ),
        ({}, TLSOptions(sni_level=2), EXIT_CONFIG, "no keypair found"),
        (
            {"CERTFILE": "cert", "KEYFILE": "key"},
            TLSOptions(client_cert=2),
            EXIT_USAGE,
            "CADIR or CAFILE",
        ),
    ],
)
def test_server_configuration_errors(
    files: dict[str, str], env: dict[str, str], options: TLSOptions, code: int, fragment: str
) -> None:
    env = {k: files.get(v, v) for k, v in env.items()}
    with pytest.raises(Fatal) as caught:
        server_context(env, options)
    assert caught.value.exit_code == code
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("server_side", "env", "code"),
    [
        (False, {"CAFILE": "ca", "CERTFILE": "cert", "KEYFILE": "/nonexistent"}, EXIT_SYSTEM),
        (False, {"CAFILE": "ca", "CERTFILE": "/nonexistent", "KEYFILE": "key"}, EXIT_SYSTEM),
        (True, {"CERTFILE": "/nonexistent", "KEYFILE": "key"}, EXIT_CONFIG),
        (True, {"KEYFILE:a.example": "/nonexistent", "CERTFILE:a.example": "cert"}, EXIT_CONFIG),
    ],
    ids=["client-key", "client-cert", "server-cert", "server-sni-key"],
)
def test_an_unreadable_keypair_exits_as_c(
    files: dict[str, str], server_side: bool, env: dict[str, str], code: int
) -> None:
    """C: a client keypair (-y) that cannot be read is a system error (111);
    a server's, read through its SNI policy, is 96."""
    env = {k: files.get(v, v) for k, v in env.items()}
    with pytest.raises(Fatal) as caught:
        if server_side:
            server_context(env, TLSOptions(sni_level=2 if "KEYFILE" not in env else 0))
        else:
            client_context(env, TLSOptions(client_cert=1))
    assert caught.value.exit_code == code
    assert "unable to read" in caught.value.message


def test_identity_parsing() -> None:
    assert parse_identity({"TLS_UID": "1000", "TLS_GID": "100"}) == (1000, 100)
    assert parse_identity({}) == (None, None)
    with pytest.raises(Fatal) as caught:
        parse_identity({"TLS_UID": "nobody"})
    assert caught.value.exit_code == EXIT_USAGE


def test_tls_variables_for_env_cleaning() -> None:
    assert all(
        map(
            is_tls_variable,
            [
                "CADIR",
                "CAFILE",
                "CERTFILE",
                "KEYFILE",
                "TLS_UID",
                "TLS_GID",
                "KEYFILE:x",
                "CERTFILE:x",
            ],
        )
    )
    assert not any(map(is_tls_variable, ["PROTO", "TCPREMOTEIP", "SSL_CIPHER", "KEYFILES"]))
