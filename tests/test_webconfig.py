"""The web config file: every refusal with its exact message, TLS contexts, basic auth."""

from __future__ import annotations

import base64
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization

from exporter.basicauth import AUTH_FAILURE_BUDGET, AUTH_FAILURE_REFILL_SECONDS, BasicAuth
from exporter.httpserver import Verdict
from exporter.webconfig import WebConfig, WebConfigError, load_web_config
from tests.pki import PKI, client_context, make_pki

ALICE_PASSWORD = "correct horse battery staple"
# Cost 4, the minimum, keeps real bcrypt checks at about a millisecond.
ALICE_HASH = bcrypt.hashpw(ALICE_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
BOB_PASSWORD = "pässwörd:with:colons"
BOB_HASH = "$2y$" + bcrypt.hashpw(BOB_PASSWORD.encode(), bcrypt.gensalt(4)).decode()[4:]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """The shared certificates, and the wrong keys and files the refusals need."""
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    other = pki.ca.issue_cert("other.example")
    other.private_key_pem.write_to_path(str(pki.dir / "other.key"))
    key = serialization.load_pem_private_key((pki.dir / "server.key").read_bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (pki.dir / "encrypted.key").write_bytes(encrypted)
    (pki.dir / "garbage.pem").write_text("not a certificate\n")
    return pki


def write(tmp_path: Path, text: str, name: str = "web.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    return caught.value.problems


TLS = "tls_server_config:\n  cert_file: {dir}/server.crt\n  key_file: {dir}/server.key\n"
MTLS = TLS + "  client_ca_file: {dir}/clients-ca.crt\n"
ALL_AUTH_TYPES = (
    "NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, "
    "RequireAndVerifyClientCert"
)
NOT_BCRYPT = (
    "the password must be a bcrypt hash ($2y$, cost, then 53 characters; make one with: "
    "htpasswd -nBC 10 \"\" | tr -d ':\\n'), not a plain password or other hash"
)

BAD_FILES: list[tuple[str, str, list[str]]] = [
    ("not a mapping", "- tls_server_config\n", ["top level: must be a mapping, not a list"]),
    (
        "misspelt top-level key",
        "tls_config:\n  cert_file: x\n",
        ["top level: unknown key 'tls_config' (did you mean 'tls_server_config'?)"],
    ),
    (
        "rate_limit",
        "rate_limit:\n  interval: 1s\n  burst: 20\n",
        ["rate_limit: not supported by simplivity-exporter: remove it, or rate-limit in a proxy"],
    ),
    (
        "tls section not a mapping",
        "tls_server_config: [server.crt]\n",
        ["tls_server_config: must be a mapping, not a list"],
    ),
    (
        "misspelt tls key",
        TLS + "  client_auth: NoClientCert\n",
        ["tls_server_config: unknown key 'client_auth' (did you mean 'client_auth_type'?)"],
    ),
    (
        "client_allowed_sans",
        MTLS + "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_allowed_sans: [scraper.example]\n",
        [
            "tls_server_config.client_allowed_sans: not supported by simplivity-exporter: "
            "remove it, or issue client certificates from a CA that signs only the allowed "
            "clients"
        ],
    ),
    (
        "key without cert",
        "tls_server_config:\n  key_file: {dir}/server.key\n",
        ["tls_server_config: cert_file is required"],
    ),
    (
        "cert without key",
        "tls_server_config:\n  cert_file: {dir}/server.crt\n",
        ["tls_server_config: key_file is required"],
    ),
    (
        "settings but neither cert nor key",
        "tls_server_config:\n  min_version: TLS13\n",
        ["tls_server_config: cert_file is required", "tls_server_config: key_file is required"],
    ),
    (
        "cert both inline and as a file",
        TLS + "  cert: '-----BEGIN CERTIFICATE-----'\n",
        ["tls_server_config: cert and cert_file are mutually exclusive"],
    ),
    (
        "missing cert file",
        "tls_server_config:\n  cert_file: {dir}/missing.crt\n  key_file: {dir}/server.key\n",
        ["tls_server_config.cert_file: cannot read {dir}/missing.crt: No such file or directory"],
    ),
    (
        "cert file is a directory",
        "tls_server_config:\n  cert_file: {dir}\n  key_file: {dir}/server.key\n",
        ["tls_server_config.cert_file: cannot read {dir}: Is a directory"],
    ),
    (
        "missing key file",
        "tls_server_config:\n  cert_file: {dir}/server.crt\n  key_file: {dir}/missing.key\n",
        ["tls_server_config.key_file: cannot read {dir}/missing.key: No such file or directory"],
    ),
    (
        "cert_file holds a key",
        "tls_server_config:\n  cert_file: {dir}/server.key\n  key_file: {dir}/server.key\n",
        ["tls_server_config.cert_file: {dir}/server.key holds no PEM certificate"],
    ),
    (
        "key_file holds garbage",
        "tls_server_config:\n  cert_file: {dir}/server.crt\n  key_file: {dir}/garbage.pem\n",
        ["tls_server_config.key_file: {dir}/garbage.pem holds no PEM private key"],
    ),
    (
        "key of another certificate",
        "tls_server_config:\n  cert_file: {dir}/server.crt\n  key_file: {dir}/other.key\n",
        [
            "tls_server_config: the key in {dir}/other.key does not belong to the "
            "certificate in {dir}/server.crt"
        ],
    ),
    (
        "encrypted key",
        "tls_server_config:\n  cert_file: {dir}/server.crt\n  key_file: {dir}/encrypted.key\n",
        [
            "tls_server_config.key_file: {dir}/encrypted.key is encrypted, and the web config "
            "has no passphrase: decrypt it with: openssl pkey -in encrypted.key -out plain.key"
        ],
    ),
    (
        "cert_file not a string",
        "tls_server_config:\n  cert_file: 42\n  key_file: {dir}/server.key\n",
        ["tls_server_config.cert_file: must be a string, not a number (42): quote it in YAML"],
    ),
    (
        "unknown client_auth_type",
        TLS + "  client_auth_type: VerifyEverything\n",
        [f"tls_server_config.client_auth_type: 'VerifyEverything' is not one of {ALL_AUTH_TYPES}"],
    ),
    (
        "RequireAnyClientCert",
        MTLS + "  client_auth_type: RequireAnyClientCert\n",
        [
            "tls_server_config.client_auth_type: RequireAnyClientCert cannot be honoured: "
            "Python's ssl module cannot require a certificate without verifying it; use "
            "RequireAndVerifyClientCert with client_ca_file"
        ],
    ),
    (
        "RequireAndVerifyClientCert without a client CA",
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        [
            "tls_server_config: client_ca_file is required with client_auth_type "
            "RequireAndVerifyClientCert"
        ],
    ),
    (
        "VerifyClientCertIfGiven without a client CA",
        TLS + "  client_auth_type: VerifyClientCertIfGiven\n",
        [
            "tls_server_config: client_ca_file is required with client_auth_type "
            "VerifyClientCertIfGiven"
        ],
    ),
    (
        "client CA without a client_auth_type",
        MTLS,
        [
            "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert, so "
            "client certificates would not be checked; set client_auth_type: "
            "RequireAndVerifyClientCert"
        ],
    ),
    (
        "client CA file holds no certificate",
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: {dir}/garbage.pem\n",
        ["tls_server_config.client_ca_file: {dir}/garbage.pem holds no PEM certificate"],
    ),
    (
        "unknown min_version",
        TLS + "  min_version: TLS14\n",
        ["tls_server_config.min_version: 'TLS14' is not one of TLS10, TLS11, TLS12, TLS13"],
    ),
    (
        "min_version as a number",
        TLS + "  max_version: 1.3\n",
        ["tls_server_config.max_version: must be a string, not a number (1.3): quote it in YAML"],
    ),
    (
        "min_version above max_version",
        TLS + "  min_version: TLS13\n  max_version: TLS12\n",
        ["tls_server_config: min_version TLS13 is newer than max_version TLS12"],
    ),
    (
        "insecure and unknown cipher suites",
        TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA, ECDHE-RSA-AES128-GCM-SHA256]\n",
        [
            "tls_server_config.cipher_suites: 'TLS_RSA_WITH_RC4_128_SHA' is not a cipher suite "
            "that exporter-toolkit supports (Go's crypto/tls.CipherSuites())",
            "tls_server_config.cipher_suites: 'ECDHE-RSA-AES128-GCM-SHA256' is not a cipher "
            "suite that exporter-toolkit supports (Go's crypto/tls.CipherSuites())",
        ],
    ),
    (
        "cipher_suites not a list",
        TLS + "  cipher_suites: TLS_AES_128_GCM_SHA256\n",
        [
            "tls_server_config.cipher_suites: must be a list of strings, "
            "not a string ('TLS_AES_128_GCM_SHA256')"
        ],
    ),
    (
        "curve_preferences with a number",
        TLS + "  curve_preferences: [X25519, 25519]\n",
        ["tls_server_config.curve_preferences: must be a list of strings"],
    ),
    (
        "unknown curve",
        TLS + "  curve_preferences: [X448]\n",
        [
            "tls_server_config.curve_preferences: 'X448' is not one of CurveP256, CurveP384, "
            "CurveP521, X25519"
        ],
    ),
    (
        "prefer_server_cipher_suites not a boolean",
        TLS + "  prefer_server_cipher_suites: always\n",
        [
            "tls_server_config.prefer_server_cipher_suites: must be true or false, "
            "not a string ('always')"
        ],
    ),
    (
        "http2 not a boolean",
        "http_server_config:\n  http2: 2\n",
        ["http_server_config.http2: must be true or false, not a number (2)"],
    ),
    (
        "header that cannot be configured",
        "http_server_config:\n  headers:\n    Server: simplivity\n",
        [
            "http_server_config.headers: 'Server' cannot be configured (allowed: "
            "Content-Security-Policy, X-Frame-Options, X-Content-Type-Options, "
            "X-XSS-Protection, Strict-Transport-Security)"
        ],
    ),
    (
        "header value not allowed",
        "http_server_config:\n  headers:\n    X-Frame-Options: allow-from-anywhere\n",
        [
            "http_server_config.headers.X-Frame-Options: 'allow-from-anywhere' is not one of "
            "deny, sameorigin"
        ],
    ),
    (
        "header value on two lines",
        'http_server_config:\n  headers:\n    Content-Security-Policy: "a\\r\\nSet-Cookie: x"\n',
        ["http_server_config.headers.Content-Security-Policy: must be a single line"],
    ),
    (
        "headers as a list",
        "http_server_config:\n  headers: [X-Frame-Options]\n",
        ["http_server_config.headers: must be a mapping, not a list"],
    ),
    (
        "users as a list",
        "basic_auth_users:\n  - alice\n",
        ["basic_auth_users: must be a mapping of user name to bcrypt hash, not a list"],
    ),
    (
        "plain password instead of a hash",
        "basic_auth_users:\n  alice: hunter2\n",
        [f"basic_auth_users.alice: {NOT_BCRYPT}"],
    ),
    (
        "hash of another kind",
        "basic_auth_users:\n  alice: '{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ='\n",
        [f"basic_auth_users.alice: {NOT_BCRYPT}"],
    ),
    (
        "bcrypt cost out of range",
        "basic_auth_users:\n  alice: '$2y$99$" + ALICE_HASH[7:] + "'\n",
        [f"basic_auth_users.alice: {NOT_BCRYPT}"],
    ),
    (
        "user name with a colon",
        f"basic_auth_users:\n  'alice:admin': '{ALICE_HASH}'\n",
        ["basic_auth_users.alice:admin: a user name cannot contain ':' in basic auth"],
    ),
    (
        "user name that YAML reads as a number",
        f"basic_auth_users:\n  1234: '{ALICE_HASH}'\n",
        ["basic_auth_users: user name 1234 must be a string: put it in quotes"],
    ),
    (
        "user and hash swapped",
        f"basic_auth_users:\n  '{ALICE_HASH}': alice\n",
        ["basic_auth_users: a user name looks like a bcrypt hash: user and hash swapped?"],
    ),
    (
        "duplicate user",
        f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n  bob: '{BOB_HASH}'\n  alice: x\n",
        ["line 4: duplicate key 'alice'", f"basic_auth_users.alice: {NOT_BCRYPT}"],
    ),
    (
        "broken YAML",
        "basic_auth_users:\n  alice: '$2y$10$abc\n  bob: [\n",
        ["not valid YAML at line 4, column 1: found unexpected end of stream"],
    ),
    (
        "a NUL character",
        "http_server_config:\n  http2: \x00\n",
        ["not valid YAML: special characters are not allowed"],
    ),
    (
        "a value PyYAML cannot build",
        "http_server_config: !!timestamp x\n",
        ["not valid YAML: a value that cannot be read, too long or nested too deeply"],
    ),
    (
        "a blank file name",
        "tls_server_config:\n  cert_file: '  '\n  key_file: {dir}/server.key\n",
        ["tls_server_config.cert_file: must not be blank"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=name) for name, text, expected in BAD_FILES],
)
def test_a_bad_file_is_refused_with_exact_messages(
    pki: PKI, tmp_path: Path, text: str, expected: list[str]
) -> None:
    assert problems_of(write(tmp_path, pki.fill(text))) == [pki.fill(line) for line in expected]


def test_every_problem_is_reported_at_once_one_per_line(pki: PKI, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        pki.fill(
            "tls_server_config:\n"
            "  cert_file: {dir}/missing.crt\n"
            "  key_file: {dir}/server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n"
            "  min_version: TLS9\n"
            "http_server_config:\n"
            "  headers:\n"
            "    X-Content-Type-Options: sniff\n"
            "basic_auth_users:\n"
            "  alice: hunter2\n"
        ),
    )
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    assert str(caught.value) == (
        f"{path} has 5 problem(s):\n"
        f"  - tls_server_config.cert_file: cannot read {pki.dir}/missing.crt: "
        "No such file or directory\n"
        "  - tls_server_config: client_ca_file is required with client_auth_type "
        "RequireAndVerifyClientCert\n"
        "  - tls_server_config.min_version: 'TLS9' is not one of TLS10, TLS11, TLS12, TLS13\n"
        "  - http_server_config.headers.X-Content-Type-Options: 'sniff' is not one of nosniff\n"
        f"  - basic_auth_users.alice: {NOT_BCRYPT}"
    )


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "absent.yml") == [
        "cannot read the file: No such file or directory"
    ]
    (tmp_path / "latin1.yml").write_bytes(b"basic_auth_users:\n  j\xf6rg: x\n")
    assert problems_of(tmp_path / "latin1.yml") == ["the file is not UTF-8 text"]


def test_no_secret_appears_in_any_message(pki: PKI, tmp_path: Path) -> None:
    inline_key = (pki.dir / "other.key").read_text()
    secrets = [ALICE_HASH, BOB_HASH, "hunter2", "s3cr3t-plain", inline_key.splitlines()[1]]
    files = [
        # The hashes are fine here; the mismatched inline key and plain passwords are not.
        "tls_server_config:\n  cert_file: {dir}/server.crt\n  key: |\n"
        + "".join(f"    {line}\n" for line in inline_key.splitlines())
        + f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n  bob: hunter2\n  carol: s3cr3t-plain\n"
        f"  '{BOB_HASH}': dave\n",
        # A syntax error on the line holding a hash: PyYAML would quote that line.
        f"basic_auth_users:\n  alice: '{ALICE_HASH}' ]\n",
        f"basic_auth_users:\n  bob: {BOB_HASH}\n  bob: hunter2: again\n",
        f"basic_auth_users: hunter2\ntls_server_config: {ALICE_HASH}\n",
        # A hash in a key's place, twice, and at the top level.
        f"basic_auth_users:\n  '{ALICE_HASH}': alice\n  '{ALICE_HASH}': bob\n'{BOB_HASH}': x\n",
    ]
    for number, text in enumerate(files):
        with pytest.raises(WebConfigError) as caught:
            load_web_config(write(tmp_path, pki.fill(text), f"web{number}.yml"))
        message = str(caught.value)
        assert message.count("\n") == len(caught.value.problems)
        for secret in secrets:
            assert secret not in message, (number, message)
            assert secret not in repr(caught.value)


def test_a_loaded_config_shows_no_hash(tmp_path: Path) -> None:
    text = f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n  bob: '{BOB_HASH}'\n"
    config = load_web_config(write(tmp_path, text))
    assert ALICE_HASH not in repr(config)
    assert BOB_HASH[7:] not in repr(config)
    assert "alice" in repr(config)


@pytest.mark.parametrize("text", ["", "# nothing\n", "{}\n", "tls_server_config:\n"])
def test_an_empty_file_serves_plain_http_without_auth(tmp_path: Path, text: str) -> None:
    config = load_web_config(write(tmp_path, text))
    assert config.ssl_context() is None
    assert config.tls is None
    assert not config.basic_auth_enabled
    assert config.authenticate(None)
    assert config.authenticate("Basic garbage")
    assert dict(config.extra_headers) == {}
    assert config.notes == ()


def test_the_default_web_config_is_plain_http_without_auth() -> None:
    config = WebConfig()
    assert config.ssl_context() is None
    assert not config.basic_auth_enabled
    assert config.authenticate(None)


def test_a_tls_config_gives_a_server_context(pki: PKI, tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, pki.fill(TLS)))
    context = config.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert config.tls is not None
    assert config.tls.cert == f"{pki.dir}/server.crt"
    assert config.tls.client_auth_type == "NoClientCert"
    assert config.notes == ()
    assert handshake(context, client_context(pki)) == "TLSv1.3"


def test_relative_paths_are_read_from_the_config_files_directory(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = "tls_server_config:\n  cert_file: server.crt\n  key_file: ./server.key\n"
    config = load_web_config(write(pki.dir, text, "relative.yml"))
    assert config.tls is not None
    assert config.tls.cert == f"{pki.dir}/server.crt"
    assert config.ssl_context() is not None


def test_inline_cert_key_and_client_ca_are_accepted(pki: PKI, tmp_path: Path) -> None:
    def block(name: str, path: Path) -> str:
        return f"  {name}: |\n" + "".join(f"    {line}\n" for line in path.read_text().splitlines())

    text = (
        "tls_server_config:\n"
        + block("cert", pki.dir / "server.crt")
        + block("key", pki.dir / "server.key")
        + block("client_ca", pki.dir / "clients-ca.crt")
        + "  client_auth_type: RequireAndVerifyClientCert\n"
    )
    config = load_web_config(write(tmp_path, text))
    assert config.tls is not None
    assert (config.tls.cert, config.tls.key, config.tls.client_ca) == (
        "(inline cert)",
        "(inline key)",
        "(inline client_ca)",
    )
    context = config.ssl_context()
    assert context is not None
    assert handshake(context, client_context(pki, pki.client)) == "TLSv1.3"


@pytest.mark.parametrize(
    ("auth_type", "mode"),
    [
        ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
        ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
    ],
)
def test_client_auth_type_sets_the_verify_mode(
    pki: PKI, tmp_path: Path, auth_type: str, mode: ssl.VerifyMode
) -> None:
    config = load_web_config(write(tmp_path, pki.fill(MTLS) + f"  client_auth_type: {auth_type}\n"))
    context = config.ssl_context()
    assert context is not None
    assert context.verify_mode == mode


def test_mutual_tls_admits_only_clients_of_the_client_ca(pki: PKI, tmp_path: Path) -> None:
    text = pki.fill(MTLS) + "  client_auth_type: RequireAndVerifyClientCert\n"
    context = load_web_config(write(tmp_path, text)).ssl_context()
    assert context is not None
    assert handshake(context, client_context(pki, pki.client)) == "TLSv1.3"
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        handshake(context, client_context(pki))
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        handshake(context, client_context(pki, pki.stranger))


def test_verify_if_given_admits_clients_without_a_certificate(pki: PKI, tmp_path: Path) -> None:
    text = pki.fill(MTLS) + "  client_auth_type: VerifyClientCertIfGiven\n"
    context = load_web_config(write(tmp_path, text)).ssl_context()
    assert context is not None
    assert handshake(context, client_context(pki)) == "TLSv1.3"
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        handshake(context, client_context(pki, pki.stranger))


def test_request_client_cert_admits_anyone_and_says_so(pki: PKI, tmp_path: Path) -> None:
    config = load_web_config(
        write(tmp_path, pki.fill(TLS) + "  client_auth_type: RequestClientCert\n")
    )
    context = config.ssl_context()
    assert context is not None
    assert handshake(context, client_context(pki, pki.stranger)) == "TLSv1.3"
    assert config.notes == (
        "client_auth_type RequestClientCert: client certificates are neither required nor "
        "checked; use RequireAndVerifyClientCert to authenticate clients",
    )


def test_min_version_refuses_older_clients(pki: PKI, tmp_path: Path) -> None:
    context = load_web_config(
        write(tmp_path, pki.fill(TLS) + "  min_version: TLS13\n")
    ).ssl_context()
    assert context is not None
    old_client = client_context(pki)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError, match=r"UNSUPPORTED_PROTOCOL|VERSION"):
        handshake(context, old_client)


def test_cipher_suites_map_to_openssl_names(pki: PKI, tmp_path: Path) -> None:
    text = pki.fill(TLS) + (
        "  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n"
        "  prefer_server_cipher_suites: false\n"
    )
    context = load_web_config(write(tmp_path, text)).ssl_context()
    assert context is not None
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]
    assert tls12 == ["ECDHE-ECDSA-AES256-GCM-SHA384"]  # trustme's keys are ECDSA
    assert handshake(context, client_context(pki)) == "TLSv1.2"


def test_every_go_cipher_suite_name_is_accepted(pki: PKI, tmp_path: Path) -> None:
    names = [
        f"TLS_{kx}_WITH_{cipher}"
        for kx in ("ECDHE_ECDSA", "ECDHE_RSA")
        for cipher in (
            "AES_128_CBC_SHA",
            "AES_256_CBC_SHA",
            "AES_128_GCM_SHA256",
            "AES_256_GCM_SHA384",
            "CHACHA20_POLY1305_SHA256",
            "CHACHA20_POLY1305",
        )
    ] + [f"TLS_RSA_WITH_AES_{bits}" for bits in ("128_CBC_SHA", "256_CBC_SHA", "128_GCM_SHA256")]
    text = pki.fill(TLS) + "  cipher_suites:\n" + "".join(f"    - {n}\n" for n in names)
    context = load_web_config(write(tmp_path, text)).ssl_context()
    assert context is not None
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}
    assert len(tls12) == len(names) - 2  # the CHACHA20 aliases name the same two suites


def test_curve_preferences(pki: PKI, tmp_path: Path) -> None:
    one = load_web_config(write(tmp_path, pki.fill(TLS) + "  curve_preferences: [CurveP384]\n"))
    assert one.notes == ()
    context = one.ssl_context()
    assert context is not None
    client = client_context(pki)
    client.set_ecdh_curve("prime256v1")  # a client that offers only another curve
    with pytest.raises(ssl.SSLError):
        handshake(context, client)
    several = load_web_config(
        write(tmp_path, pki.fill(TLS) + "  curve_preferences: [X25519, CurveP256]\n")
    )
    assert several.notes == (
        "curve_preferences lists several curves, but Python 3.11 can restrict the handshake "
        "to one curve only: OpenSSL's default curves stay in use",
    )


def test_headers_are_canonicalised_and_blank_ones_unset(tmp_path: Path) -> None:
    text = (
        "http_server_config:\n"
        "  http2: true\n"
        "  headers:\n"
        "    x-frame-options: DENY\n"
        "    Strict-Transport-Security: max-age=31536000\n"
        "    Content-Security-Policy: ''\n"
    )
    config = load_web_config(write(tmp_path, text))
    assert dict(config.extra_headers) == {
        "X-Frame-Options": "DENY",
        "Strict-Transport-Security": "max-age=31536000",
    }


def test_basic_auth_without_tls_is_noted(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n"))
    assert config.basic_auth_enabled
    assert config.notes == (
        "basic_auth_users without tls_server_config: passwords cross the network in clear text",
    )


def test_without_bcrypt_basic_auth_is_refused_but_tls_works(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # `import bcrypt` now fails
    assert load_web_config(write(tmp_path, pki.fill(TLS), "tls.yml")).ssl_context() is not None
    assert problems_of(write(tmp_path, f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n")) == [
        "basic_auth_users: checking passwords needs the bcrypt package: "
        "pip install 'simplivity-exporter[basic-auth]'"
    ]


# --- authenticate() ------------------------------------------------------------------------


class CountingChecker:
    """bcrypt.checkpw, counting its calls."""

    def __init__(self, check: Callable[[bytes, bytes], bool] = bcrypt.checkpw) -> None:
        self.check = check
        self.calls = 0

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls += 1
        return self.check(password, hashed)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return write(tmp_path, f"basic_auth_users:\n  alice: '{ALICE_HASH}'\n  bob: '{BOB_HASH}'\n")


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        pytest.param(basic("alice", ALICE_PASSWORD), True, id="right password"),
        pytest.param(basic("bob", BOB_PASSWORD), True, id="$2y$ hash, colons and UTF-8"),
        pytest.param(
            "basic  " + base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode(),
            True,
            id="scheme in lower case",
        ),
        pytest.param(basic("alice", "wrong"), False, id="wrong password"),
        pytest.param(basic("alice", ""), False, id="empty password"),
        pytest.param(basic("alice", ALICE_PASSWORD + " "), False, id="trailing space"),
        pytest.param(basic("bob", ALICE_PASSWORD), False, id="another user's password"),
        pytest.param(basic("mallory", ALICE_PASSWORD), False, id="unknown user"),
        pytest.param(basic("ALICE", ALICE_PASSWORD), False, id="user name case"),
        pytest.param(basic("alice", "a\0b"), False, id="NUL in the password"),
        pytest.param(None, False, id="no header"),
        pytest.param("", False, id="empty header"),
        pytest.param("Bearer abc", False, id="other scheme"),
        pytest.param("Basic", False, id="no credentials"),
        pytest.param("Basic !!!!", False, id="not base64"),
        pytest.param("Basic " + base64.b64encode(b"alice").decode(), False, id="no colon"),
    ],
)
def test_authenticate(users: Path, authorization: str | None, expected: bool) -> None:
    config = load_web_config(users)
    assert config.authenticate(authorization) is expected


def test_a_verified_password_is_checked_by_bcrypt_only_once(users: Path) -> None:
    checker = CountingChecker()
    config = load_web_config(users, checkpw=checker)
    for _ in range(5):
        assert config.authenticate(basic("alice", ALICE_PASSWORD))
    assert checker.calls == 1
    for _ in range(3):
        assert not config.authenticate(basic("alice", "wrong"))
    assert checker.calls == 2  # a failure is remembered too: repeating it costs nothing
    assert config.authenticate(basic("bob", BOB_PASSWORD))
    assert config.authenticate(basic("alice", ALICE_PASSWORD))
    assert checker.calls == 3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_verdicts_answer_from_memory_and_budget_each_client_s_guesses() -> None:
    checker = CountingChecker()
    clock = Clock()
    auth = BasicAuth({"alice": ALICE_HASH}, checker, clock=clock)
    right = basic("alice", ALICE_PASSWORD)
    assert auth.verdict(None, "10.0.0.1") is Verdict.DENY
    assert auth.verdict("Basic !!!!", "10.0.0.1") is Verdict.DENY
    assert auth.verdict(right, "10.0.0.1") is Verdict.CHECK
    assert auth.check(right, "10.0.0.1")
    assert auth.verdict(right, "10.0.0.1") is Verdict.ALLOW
    # A guesser: AUTH_FAILURE_BUDGET checks, then refusals that cost nothing and come late.
    guesses = [basic("alice", f"guess {n}") for n in range(AUTH_FAILURE_BUDGET + 3)]
    verdicts = [auth.verdict(guess, "10.0.0.2") for guess in guesses]
    assert verdicts.count(Verdict.CHECK) == AUTH_FAILURE_BUDGET
    assert verdicts[AUTH_FAILURE_BUDGET:] == [Verdict.DENY_LATER] * 3
    for guess in guesses[:AUTH_FAILURE_BUDGET]:
        assert not auth.check(guess, "10.0.0.2")
    assert auth.verdict(guesses[0], "10.0.0.3") is Verdict.DENY_LATER  # known wrong, anywhere
    calls = checker.calls
    # Other clients keep their own budget; known credentials pass whoever is over budget.
    assert auth.verdict(basic("alice", "another"), "10.0.0.3") is Verdict.CHECK
    assert auth.verdict(right, "10.0.0.2") is Verdict.ALLOW
    # The budget comes back with time, a guess per AUTH_FAILURE_REFILL_SECONDS.
    assert auth.verdict(guesses[-1], "10.0.0.2") is Verdict.DENY_LATER
    clock.now += AUTH_FAILURE_REFILL_SECONDS
    assert auth.verdict(guesses[-1], "10.0.0.2") is Verdict.CHECK
    assert auth.verdict(guesses[-2], "10.0.0.2") is Verdict.DENY_LATER
    assert checker.calls == calls


def test_the_real_bcrypt_checkpw_is_used_and_cached(
    users: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checker = CountingChecker(bcrypt.checkpw)
    monkeypatch.setattr(bcrypt, "checkpw", checker)
    config = load_web_config(users)
    assert config.authenticate(basic("alice", ALICE_PASSWORD))
    assert config.authenticate(basic("alice", ALICE_PASSWORD))
    assert checker.calls == 1


def test_a_new_load_starts_with_an_empty_cache(users: Path) -> None:
    checker = CountingChecker()
    assert load_web_config(users, checkpw=checker).authenticate(basic("alice", ALICE_PASSWORD))
    assert load_web_config(users, checkpw=checker).authenticate(basic("alice", ALICE_PASSWORD))
    assert checker.calls == 2


def test_an_unknown_user_costs_a_check_and_never_gets_in(users: Path) -> None:
    checker = CountingChecker(lambda password, hashed: True)  # a checker that says yes to all
    config = load_web_config(users, checkpw=checker)
    assert not config.authenticate(basic("mallory", "anything"))
    assert checker.calls == 1  # as slow as a wrong password: no user enumeration by timing


def test_the_cache_is_bounded(users: Path) -> None:
    checker = CountingChecker(lambda password, hashed: True)
    auth = BasicAuth({"alice": ALICE_HASH}, checker, cache_size=2)
    for password in ("one", "two", "three"):
        assert auth.authenticate(basic("alice", password))
    assert auth.authenticate(basic("alice", "three"))
    assert auth.authenticate(basic("alice", "two"))
    assert checker.calls == 3
    assert auth.authenticate(basic("alice", "one"))  # evicted: checked again
    assert checker.calls == 4


def test_passwords_longer_than_72_bytes_match_as_bcrypt_everywhere_does(tmp_path: Path) -> None:
    long_password = "x" * 72 + "ignored by bcrypt"
    hashed = bcrypt.hashpw(long_password[:72].encode(), bcrypt.gensalt(4)).decode()
    config = load_web_config(write(tmp_path, f"basic_auth_users:\n  alice: '{hashed}'\n"))
    assert config.authenticate(basic("alice", long_password))
    assert not config.authenticate(basic("alice", "x" * 71))


def test_concurrent_scrapes_authenticate(users: Path) -> None:
    config = load_web_config(users)
    results: list[bool] = []
    lock = threading.Lock()

    def scrape() -> None:
        for _ in range(20):
            outcome = config.authenticate(basic("alice", ALICE_PASSWORD))
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 160


# --- in-memory TLS handshakes --------------------------------------------------------------


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """Run a TLS handshake through memory buffers; the negotiated version, or SSLError.

    A server that refuses the client's certificate says so after the client has finished
    (TLS 1.3), so a byte of application data is exchanged to surface the refusal.
    """
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname="localhost")
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    pending = [client, server]
    for _ in range(10):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        if not pending:
            client.write(b"x")
            assert server.read(1) == b"x"
            server.write(b"y")
            assert client.read(1) == b"y"
            version = client.version()
            assert version is not None
            return version
    raise AssertionError("the handshake did not finish")
