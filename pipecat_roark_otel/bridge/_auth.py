"""Who may write calls through the bridge: a bearer token, as a Collector's ``headers`` send it."""

from __future__ import annotations

import hmac
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ENV_TOKEN: Final = "ROARK_BRIDGE_TOKEN"


class BearerAuth:
    """``Authorization: Bearer <token>``; with no token configured, everyone (loopback only)."""

    def __init__(self, token: str | None) -> None:
        if token is not None and (not token or any(c.isspace() for c in token)):
            raise ValueError(
                f"bridge token ({ENV_TOKEN} / --token-file) must be non-empty, without whitespace"
            )
        self._expected = f"bearer {token}".encode() if token else None

    @property
    def required(self) -> bool:
        return self._expected is not None

    def allows(self, header: str | None) -> bool:
        if self._expected is None:
            return True
        if not header:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        offered = f"{scheme.lower()} {credentials.strip()}".encode()
        return hmac.compare_digest(offered, self._expected)

    def __repr__(self) -> str:  # never the token
        return f"BearerAuth(required={self.required})"


def resolve_token(token_file: str | os.PathLike[str] | None) -> str | None:
    """From a file (first line) or the environment; never from a flag (it shows in ``ps``)."""
    if token_file is not None:
        try:
            return Path(token_file).read_text().strip() or None
        except OSError as exc:
            raise ValueError(f"bridge --token-file {token_file}: {exc.strerror}") from None
    return os.environ.get(ENV_TOKEN) or None


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files, as the Collector's ``tls:`` settings name them; a client CA makes it mTLS."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        try:
            ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
            return self.key_file.read_bytes(), self.cert_file.read_bytes(), ca
        except OSError as exc:
            raise ValueError(f"bridge TLS file {exc.filename}: {exc.strerror}") from None

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(self.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"bridge --tls-cert/--tls-key/--tls-client-ca: {exc}") from None
        return context


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth: BearerAuth, tls: TLSFiles | None) -> None:
    """Open to the network only with a token or client certificates: anyone who reaches the
    port would write calls."""
    mtls = tls is not None and tls.client_ca_file is not None
    if not auth.required and not mtls and not is_loopback(host):
        raise ValueError(
            f"bridge host {host!r} is not loopback: set {ENV_TOKEN} (or --token-file), or "
            "--tls-client-ca, so only your Collector can write calls"
        )
