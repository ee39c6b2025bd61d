"""Certificates on disk for the tests of the exporter's own TLS: web config and secure serving."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class PKI:
    """``dir`` holds server.crt and server.key (localhost and 127.0.0.1, issued by ``ca``) and
    clients-ca.crt (the CA of ``client_ca``, for a server that verifies its clients)."""

    dir: Path
    ca: trustme.CA
    client_ca: trustme.CA
    client: trustme.LeafCert  # from the client CA the server trusts
    stranger: trustme.LeafCert  # from a CA the server does not trust

    def fill(self, text: str) -> str:
        """``text`` with ``{dir}`` replaced by the directory of the certificates."""
        return text.replace("{dir}", str(self.dir))


def make_pki(directory: Path) -> PKI:
    ca, client_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(directory / "server.crt"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    client_ca.cert_pem.write_to_path(str(directory / "clients-ca.crt"))
    return PKI(
        dir=directory,
        ca=ca,
        client_ca=client_ca,
        client=client_ca.issue_cert("scraper.example"),
        stranger=trustme.CA().issue_cert("scraper.example"),
    )


def client_context(pki: PKI, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client that trusts the server's CA and, given ``cert``, presents it."""
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context
