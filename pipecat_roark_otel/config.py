"""Settings, resolved once at construction: argument > environment > default."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

ENV_API_KEY: Final = "ROARK_API_KEY"
ENV_BASE_URL: Final = "ROARK_BASE_URL"
ENV_SPOOL_DIR: Final = "ROARK_SPOOL_DIR"

DEFAULT_BASE_URL: Final = "https://api.roark.ai"


@dataclass(frozen=True, slots=True)
class RoarkSettings:
    """Where and as whom to deliver. ``repr`` never shows the key."""

    api_key: str
    base_url: str
    spool_dir: Path

    def __repr__(self) -> str:
        return f"RoarkSettings(base_url={self.base_url!r}, spool_dir={str(self.spool_dir)!r})"


def resolve_api_key(api_key: str | None) -> str:
    value = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    if value is None or not value.strip():
        raise ValueError(
            f"Roark API key is missing: pass api_key= or set the {ENV_API_KEY} environment variable"
        )
    value = value.strip()
    if any(c.isspace() for c in value):
        raise ValueError(f"Roark API key (api_key= / {ENV_API_KEY}) must not contain whitespace")
    return value


def resolve_base_url(base_url: str | None) -> str:
    value = base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"Roark base URL (base_url= / {ENV_BASE_URL}) must be an http(s) URL "
            f"such as {DEFAULT_BASE_URL}, got {value!r}"
        )
    return value


def default_spool_root() -> Path:
    """The platform's per-user cache directory for our spool."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pipecat-roark-otel" / "spool"


def resolve_spool_dir(
    spool_dir: str | os.PathLike[str] | None, base_url: str, api_key: str
) -> Path:
    value = spool_dir if spool_dir is not None else os.environ.get(ENV_SPOOL_DIR)
    if value is not None and str(value).strip():
        return Path(value).expanduser()
    # One spool per workspace (URL and key): a record queued for one never goes to another.
    digest = hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()[:12]
    return default_spool_root() / digest


def resolve_settings(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
) -> RoarkSettings:
    url = resolve_base_url(base_url)
    key = resolve_api_key(api_key)
    return RoarkSettings(
        api_key=key, base_url=url, spool_dir=resolve_spool_dir(spool_dir, url, key)
    )
