"""``--web.config.file``: TLS, basic auth and response headers, in exporter-toolkit's format.

Prometheus' exporter-toolkit defines the file node_exporter and most Go exporters read, so
users can point this exporter at the file they already have::

    tls_server_config:
      cert_file: server.crt           # relative paths: from the web config file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze

Everything is checked when the file is loaded, including loading the certificate and key into
the ``SSLContext``, so a bad file stops the exporter at start, never at the first scrape. The
file is read once per (re)load, not on every request as exporter-toolkit does.

Where Python's ``ssl`` module cannot do what Go's ``crypto/tls`` does, the file is refused
rather than silently served with less protection than it asks for:

- ``RequireAnyClientCert`` is refused: ``ssl`` cannot demand a certificate without verifying it.
- ``RequestClientCert`` requests no certificate; Go would not verify one either, so exactly
  the same clients get in. A note says so.
- ``client_allowed_sans`` and ``rate_limit`` are refused as unsupported.
- ``cipher_suites`` are mapped from Go's names to OpenSSL's (TLS 1.2 and older, as in Go).
- ``curve_preferences`` with one curve restricts the handshake to it; with several, OpenSSL's
  default groups stay in use (Python 3.11 can set only one) and a note says so.
- ``http_server_config.http2`` is accepted and has no effect: the exporter serves HTTP/1.1.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from exporter.basicauth import BasicAuth, PasswordChecker
from exporter.yamlfile import TOP_LEVEL, ConfigError, Reader, join, kind, read_yaml

_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_HOW_TO_HASH = "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'"


_CLIENT_AUTH_TYPES: Mapping[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    # Go requests a certificate but never verifies it, so it lets in exactly whom CERT_NONE does.
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_ALL_CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's crypto/tls.CipherSuites() (the ones exporter-toolkit accepts) under OpenSSL's names.
_CIPHER_SUITES: Mapping[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites are always enabled, in Go as in OpenSSL; listing them changes nothing.
_TLS13_CIPHER_SUITES = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)
_CURVES: Mapping[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
# Header name (lower case) -> canonical name and the values allowed, None for any value.
_HEADERS: Mapping[str, tuple[str, tuple[str, ...] | None]] = {
    "content-security-policy": ("Content-Security-Policy", None),
    "x-frame-options": ("X-Frame-Options", ("deny", "sameorigin")),
    "x-content-type-options": ("X-Content-Type-Options", ("nosniff",)),
    "x-xss-protection": ("X-XSS-Protection", None),
    "strict-transport-security": ("Strict-Transport-Security", None),
}

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_HTTP_KEYS = ("http2", "headers")
_UNSUPPORTED = {
    "rate_limit": "not supported by simplivity-exporter: remove it, or rate-limit in a proxy",
    "client_allowed_sans": (
        "not supported by simplivity-exporter: remove it, or issue client certificates "
        "from a CA that signs only the allowed clients"
    ),
}


class WebConfigError(ConfigError):
    """A web config file that cannot be used; ``problems`` holds every reason, one line each.

    No message ever contains a password, a password hash or a private key.
    """

    def __init__(self, problems: list[str], source: str = "web config") -> None:
        super().__init__(problems, source)


@dataclass(frozen=True)
class TLSServerConfig:
    """What ``tls_server_config`` asked for; the context is built from it."""

    cert: str  # a path, or "(inline cert)"
    key: str  # a path, or "(inline key)": never the key itself
    client_auth_type: str = "NoClientCert"
    client_ca: str | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config. ``WebConfig()`` serves plain HTTP with no authentication."""

    tls: TLSServerConfig | None = None
    basic_auth: BasicAuth | None = field(default=None, compare=False)
    extra_headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Things the user should know that do not stop the exporter, for the log at start.
    notes: tuple[str, ...] = ()
    _context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side context built and checked at load time; None for plain HTTP."""
        return self._context

    @property
    def basic_auth_enabled(self) -> bool:
        return self.basic_auth is not None

    def authenticate(self, authorization: str | None) -> bool:
        """Whether a request with this raw ``Authorization`` header may be served."""
        return self.basic_auth is None or self.basic_auth.authenticate(authorization)


def load_web_config(path: str | Path, *, checkpw: PasswordChecker | None = None) -> WebConfig:
    """Read and check a web config file; raise :class:`WebConfigError` listing every problem.

    ``checkpw`` replaces :func:`bcrypt.checkpw` (tests count calls with it); without it,
    ``bcrypt`` is imported only if the file has ``basic_auth_users``.
    """
    source = str(path)
    document = read_yaml(path, WebConfigError)
    reader = _Reader(Path(path).resolve().parent, checkpw, document.problems)
    config = reader.web_config(document.value)
    if reader.problems:
        raise WebConfigError(reader.problems, source)
    return config


@dataclass(frozen=True)
class _PEM:
    """A PEM item from a file or inline; ``label`` names it in messages, never its content."""

    label: str
    text: str = field(repr=False)
    path: Path | None = None


class _Reader(Reader):
    """The web config file's sections, on the shared checks of :class:`Reader`."""

    def __init__(
        self, base_dir: Path, checkpw: PasswordChecker | None, problems: Iterable[str]
    ) -> None:
        super().__init__(problems)
        self.base_dir = base_dir
        self.checkpw = checkpw
        self.notes: list[str] = []

    def web_config(self, document: object) -> WebConfig:
        top = self.mapping(document, TOP_LEVEL, _TOP_KEYS, refused=_UNSUPPORTED)
        tls, context = self.tls(top.get("tls_server_config"))
        headers = self.http(top.get("http_server_config"))
        auth = self.basic_auth(top.get("basic_auth_users"))
        if auth is not None and tls is None:
            self.notes.append(
                "basic_auth_users without tls_server_config: passwords cross the network in "
                "clear text"
            )
        return WebConfig(
            tls=tls,
            basic_auth=auth,
            extra_headers=MappingProxyType(headers),
            notes=tuple(self.notes),
            _context=context,
        )

    # --- tls_server_config ----------------------------------------------------------------

    def tls(self, value: object) -> tuple[TLSServerConfig | None, ssl.SSLContext | None]:
        where = "tls_server_config"
        raw = self.mapping(value, where, _TLS_KEYS, refused=_UNSUPPORTED)
        if not raw:  # absent, empty, or only wrong keys (already reported)
            return None, None
        problems_before = len(self.problems)
        cert = self.pem(raw, "cert", "CERTIFICATE")
        key = self.pem(raw, "key", "PRIVATE KEY")
        client_ca = self.pem(raw, "client_ca", "CERTIFICATE")
        if cert is None and not self.has_either(raw, "cert"):
            self.problem(where, "cert_file is required")
        if key is None and not self.has_either(raw, "key"):
            self.problem(where, "key_file is required")

        auth_type = self.choice(
            raw, where, "client_auth_type", _ALL_CLIENT_AUTH_TYPES, "NoClientCert"
        )
        if auth_type == "RequireAnyClientCert":
            self.problem(
                f"{where}.client_auth_type",
                "RequireAnyClientCert cannot be honoured: Python's ssl module cannot require a "
                "certificate without verifying it; use RequireAndVerifyClientCert with "
                "client_ca_file",
            )
        ca_named = self.has_either(raw, "client_ca")
        if ca_named and auth_type == "NoClientCert":
            self.problem(
                where,
                "client_ca_file is set but client_auth_type is NoClientCert, so client "
                "certificates would not be checked; set client_auth_type: "
                "RequireAndVerifyClientCert",
            )
        if not ca_named and _CLIENT_AUTH_TYPES.get(auth_type, ssl.CERT_NONE) != ssl.CERT_NONE:
            self.problem(where, f"client_ca_file is required with client_auth_type {auth_type}")
        if auth_type == "RequestClientCert":
            self.notes.append(
                "client_auth_type RequestClientCert: client certificates are neither required "
                "nor checked; use RequireAndVerifyClientCert to authenticate clients"
            )

        versions = tuple(_TLS_VERSIONS)
        min_version = self.choice(raw, where, "min_version", versions, "TLS12")
        max_version = self.choice(raw, where, "max_version", versions, "TLS13")
        if _TLS_VERSIONS[min_version] > _TLS_VERSIONS[max_version]:
            self.problem(
                where, f"min_version {min_version} is newer than max_version {max_version}"
            )
        if _TLS_VERSIONS[min_version] < ssl.TLSVersion.TLSv1_2:
            self.notes.append(
                f"min_version {min_version}: the system's OpenSSL may still refuse TLS "
                "versions older than 1.2"
            )

        suites = self.string_list(raw, where, "cipher_suites")
        for suite in suites:
            if suite not in _CIPHER_SUITES and suite not in _TLS13_CIPHER_SUITES:
                self.problem(
                    f"{where}.cipher_suites",
                    f"{suite[:100]!r} is not a cipher suite that exporter-toolkit supports "
                    "(Go's crypto/tls.CipherSuites())",
                )
        curves = self.string_list(raw, where, "curve_preferences")
        for curve in curves:
            if curve not in _CURVES:
                self.problem(
                    f"{where}.curve_preferences",
                    f"{curve[:100]!r} is not one of {', '.join(_CURVES)}",
                )
        if len(curves) > 1:
            self.notes.append(
                "curve_preferences lists several curves, but Python 3.11 can restrict the "
                "handshake to one curve only: OpenSSL's default curves stay in use"
            )
        prefer_server = self.boolean(raw, where, "prefer_server_cipher_suites", True)

        if len(self.problems) > problems_before or cert is None or key is None:
            return None, None
        settings = TLSServerConfig(
            cert=cert.label,
            key=key.label,
            client_auth_type=auth_type,
            client_ca=client_ca.label if client_ca else None,
            min_version=min_version,
            max_version=max_version,
            cipher_suites=tuple(suites),
            prefer_server_cipher_suites=prefer_server,
            curve_preferences=tuple(curves),
        )
        return settings, self.context(settings, cert, key, client_ca)

    def has_either(self, raw: Mapping[str, Any], name: str) -> bool:
        return raw.get(name) not in (None, "") or raw.get(f"{name}_file") not in (None, "")

    def pem(self, raw: Mapping[str, Any], name: str, block: str) -> _PEM | None:
        """Read ``<name>_file`` or inline ``<name>`` and check it holds a PEM ``block``."""
        where = "tls_server_config"
        inline = self.string(raw, where, name, secret=name == "key")
        path = self.path(raw, where, f"{name}_file", self.base_dir)
        if inline is not None and path is not None:
            self.problem(where, f"{name} and {name}_file are mutually exclusive")
            return None
        if inline is not None:
            item = _PEM(f"(inline {name})", inline)
            label = f"{where}.{name}"
        elif path is not None:
            label = f"{where}.{name}_file"
            content = self.read_bytes(label, path)
            if content is None:
                return None
            try:
                item = _PEM(str(path), content.decode("ascii"), path)
            except UnicodeDecodeError:
                self.problem(label, f"{path} is not a PEM file")
                return None
        else:
            return None
        subject = f"{item.path} " if item.path is not None else ""
        begin = f"-----BEGIN {block}-----" if block == "CERTIFICATE" else "PRIVATE KEY-----"
        if begin not in item.text:
            self.problem(label, f"{subject}holds no PEM {block.lower()}")
            return None
        if block == "PRIVATE KEY" and "ENCRYPTED" in item.text:
            self.problem(
                label,
                f"{subject}is encrypted, and the web config has no passphrase: "
                "decrypt it with: openssl pkey -in encrypted.key -out plain.key",
            )
            return None
        return item

    def context(
        self, settings: TLSServerConfig, cert: _PEM, key: _PEM, client_ca: _PEM | None
    ) -> ssl.SSLContext | None:
        where = "tls_server_config"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _TLS_VERSIONS[settings.min_version]
        context.maximum_version = _TLS_VERSIONS[settings.max_version]
        context.set_alpn_protocols(["http/1.1"])
        try:
            with _as_file(cert) as cert_path, _as_file(key) as key_path:
                context.load_cert_chain(cert_path, key_path, password=_no_passphrase)
        except (ssl.SSLError, _PassphraseNeeded) as err:
            self.problem(where, _load_failure(err, cert, key))
            return None
        if client_ca is not None:
            try:
                if client_ca.path is None:
                    context.load_verify_locations(cadata=client_ca.text)
                else:
                    context.load_verify_locations(cafile=str(client_ca.path))
            except ssl.SSLError as err:
                self.problem(where, f"cannot load {client_ca.label}: {_ssl_reason(err)}")
                return None
        context.verify_mode = _CLIENT_AUTH_TYPES[settings.client_auth_type]
        suites = [_CIPHER_SUITES[s] for s in settings.cipher_suites if s in _CIPHER_SUITES]
        if suites:
            try:
                context.set_ciphers(":".join(dict.fromkeys(suites)))
            except ssl.SSLError:
                self.problem(
                    f"{where}.cipher_suites",
                    "the system's OpenSSL enables none of these cipher suites",
                )
                return None
        if settings.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        if len(settings.curve_preferences) == 1:
            context.set_ecdh_curve(_CURVES[settings.curve_preferences[0]])
        return context

    # --- http_server_config ---------------------------------------------------------------

    def http(self, value: object) -> dict[str, str]:
        where = "http_server_config"
        raw = self.mapping(value, where, _HTTP_KEYS, refused=_UNSUPPORTED)
        self.boolean(raw, where, "http2", True)  # accepted; HTTP/1.1 is all that is served
        where = f"{where}.headers"
        headers: dict[str, str] = {}
        # Any key here: header names are checked below, without regard to case.
        for name, header_value in self.mapping(raw.get("headers"), where, None).items():
            known = _HEADERS.get(name.lower()) if isinstance(name, str) else None
            if known is None:
                self.problem(
                    where,
                    f"{str(name)[:100]!r} cannot be configured "
                    f"(allowed: {', '.join(canonical for canonical, _ in _HEADERS.values())})",
                )
                continue
            canonical, allowed = known
            if header_value is None or header_value == "":
                continue  # exporter-toolkit: blank means unset
            if not isinstance(header_value, str):
                self.problem(f"{where}.{canonical}", f"must be a string, not {kind(header_value)}")
            elif "\r" in header_value or "\n" in header_value:
                self.problem(f"{where}.{canonical}", "must be a single line")
            elif allowed is not None and header_value.lower() not in allowed:
                self.problem(
                    f"{where}.{canonical}",
                    f"{header_value[:100]!r} is not one of {', '.join(allowed)}",
                )
            else:
                headers[canonical] = header_value
        return headers

    # --- basic_auth_users -----------------------------------------------------------------

    def basic_auth(self, value: object) -> BasicAuth | None:
        where = "basic_auth_users"
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(
                where,
                f"must be a mapping of user name to bcrypt hash, not {kind(value, secret=True)}",
            )
            return None
        hashes: dict[str, str] = {}
        for user, hashed in value.items():
            if not isinstance(user, str):
                self.problem(where, f"user name {user!r} must be a string: put it in quotes")
                continue
            if _BCRYPT_HASH.fullmatch(user):
                # Never echo it: the user and the hash were probably swapped.
                self.problem(where, "a user name looks like a bcrypt hash: user and hash swapped?")
                continue
            user_where = join(where, user)
            if ":" in user:
                self.problem(user_where, "a user name cannot contain ':' in basic auth")
            elif not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
                self.problem(
                    user_where,
                    "the password must be a bcrypt hash ($2y$, cost, then 53 characters; "
                    f"{_HOW_TO_HASH}), not a plain password or other hash",
                )
            else:
                hashes[user] = hashed
        if not hashes:
            return None
        checkpw = self.checkpw or self.bcrypt_checkpw()
        if checkpw is None:
            return None
        return BasicAuth(hashes, checkpw)

    def bcrypt_checkpw(self) -> PasswordChecker | None:
        try:
            import bcrypt  # an optional extra, needed only for basic auth
        except ImportError:
            self.problem(
                "basic_auth_users",
                "checking passwords needs the bcrypt package: "
                "pip install 'simplivity-exporter[basic-auth]'",
            )
            return None
        checker: PasswordChecker = bcrypt.checkpw
        return checker


class _PassphraseNeeded(Exception):
    """Raised by the password callback so that OpenSSL never prompts on the terminal."""


def _no_passphrase() -> str:
    raise _PassphraseNeeded


@contextmanager
def _as_file(item: _PEM) -> Iterator[str]:
    """The item's path; an inline item is written to a private file for the load only."""
    if item.path is not None:
        yield str(item.path)
        return
    with tempfile.TemporaryDirectory(prefix="webconfig-") as directory:  # mode 0700
        path = os.path.join(directory, "item.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(item.text)
        yield path


def _load_failure(err: Exception, cert: _PEM, key: _PEM) -> str:
    if isinstance(err, _PassphraseNeeded):
        return f"{key.label} is encrypted, and the web config has no passphrase"
    if isinstance(err, ssl.SSLError) and err.reason == "KEY_VALUES_MISMATCH":
        return f"the key in {key.label} does not belong to the certificate in {cert.label}"
    return f"cannot load {cert.label} with {key.label}: {_ssl_reason(err)}"


def _ssl_reason(err: Exception) -> str:
    """OpenSSL's reason without the ``[LIB: CODE]`` prefix and ``(_ssl.c:123)`` suffix."""
    text = str(err.args[1] if len(err.args) > 1 else err)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)
    return "not valid PEM" if text == "PEM lib" else text
