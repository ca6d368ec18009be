"""The real Jaeger and OpenTelemetry Collector, run from their binaries on free loopback ports.

``scripts/otel-binaries.sh`` builds both (and the Docker Compose that
tests/test_compose.py validates with) into ``$ROARK_OTEL_BIN_DIR`` (default: the
user cache dir). Without them a test skips, saying how to build them; under CI
(``CI=true``) it fails instead, so a broken build cannot pass as a skipped test.

Both run the configuration files ``docker-compose.otel.yml`` mounts (``deploy/``),
with addresses given through the ``${env:...}`` variables those files read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
JAEGER_CONFIG = DEPLOY / "jaeger.yaml"
COLLECTOR_CONFIG = DEPLOY / "otel-collector.yaml"
FLEET_COLLECTOR_CONFIG = DEPLOY / "otel-collector-fleet.yaml"

# Read at import: tests/conftest.py points XDG_CACHE_HOME at a temporary dir per test.
BIN_DIR = Path(
    os.environ.get("ROARK_OTEL_BIN_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "pipecat-roark-otel"
    / "bin"
)
START_TIMEOUT_S = 60.0

_S = TypeVar("_S", bound="_Service")


def binary(name: str) -> Path:
    """The built binary ``name`` (jaeger, otelcol, docker-compose), or skip (fail under CI)."""
    path = BIN_DIR / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    reason = (
        f"no {name} binary in {BIN_DIR}: build it with scripts/otel-binaries.sh "
        "(needs Go; set ROARK_OTEL_BIN_DIR to use another directory)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the real {name}: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} not healthy within {timeout}s:\n{tail(log)}")
        time.sleep(0.1)


def tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Service:
    """A binary started with a config file and ``${env:...}`` settings, stopped on exit.

    Each takes OTLP on a gRPC and an HTTP port of its own.
    """

    name = ""

    def __init__(self, config: Path, env: Mapping[str, str], log_dir: Path) -> None:
        self.config = config
        self.env = dict(env)
        self.log = log_dir / f"{self.name}-{free_port()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    otlp_grpc_port: int
    otlp_http_port: int

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.otlp_grpc_port}"

    @property
    def otlp_http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.otlp_http_port}"

    def health_url(self) -> str:
        raise NotImplementedError

    def start(self: _S) -> _S:
        log_dir = self.log.parent
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(binary(self.name)), f"--config={self.config}"],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log_dir,
            )
        try:
            wait_until_healthy(self.health_url(), self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Jaeger(_Service):
    """Jaeger v2 with in-memory storage (``deploy/jaeger.yaml``)."""

    name = "jaeger"

    def __init__(self, log_dir: Path) -> None:
        self.otlp_grpc_port, self.otlp_http_port = free_port(), free_port()
        self.query_port, self.health_port = free_port(), free_port()
        env = {
            "JAEGER_LISTEN_HOST": "127.0.0.1",
            "JAEGER_OTLP_GRPC_PORT": str(self.otlp_grpc_port),
            "JAEGER_OTLP_HTTP_PORT": str(self.otlp_http_port),
            "JAEGER_QUERY_PORT": str(self.query_port),
            "JAEGER_QUERY_GRPC_PORT": str(free_port()),
            "JAEGER_HEALTH_PORT": str(self.health_port),
        }
        super().__init__(JAEGER_CONFIG, env, log_dir)

    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/status"

    @property
    def url(self) -> str:
        """The UI and its HTTP API."""
        return f"http://127.0.0.1:{self.query_port}"

    def get(self, path_and_query: str) -> Any:
        """GET on Jaeger's HTTP API (what its UI calls), decoded."""
        response = httpx.get(f"{self.url}{path_and_query}", timeout=10)
        response.raise_for_status()
        return response.json()

    def find_traces(self, service: str, tags: Mapping[str, str]) -> list[dict[str, Any]]:
        query = urlencode({"service": service, "tags": json.dumps(dict(tags))})
        data = self.get(f"/api/traces?{query}")["data"]
        assert isinstance(data, list)
        return data

    def wait_for_traces(
        self,
        service: str,
        tags: Mapping[str, str],
        span_names: set[str],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll the search until its traces hold every name in ``span_names``."""
        deadline = time.monotonic() + timeout
        while True:
            traces = self.find_traces(service, tags)
            names = {s["operationName"] for t in traces for s in t["spans"]}
            if span_names <= names:
                return traces
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Jaeger has {sorted(names)} for {tags} after {timeout}s, "
                    f"missing {sorted(span_names - names)}"
                )
            time.sleep(0.2)


class Collector(_Service):
    """Our OpenTelemetry Collector build running a shipped config file."""

    name = "otelcol"

    def __init__(self, config: Path, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.otlp_grpc_port, self.otlp_http_port = free_port(), free_port()
        self.health_port, self.metrics_port = free_port(), free_port()
        settings = {
            "OTELCOL_LISTEN_HOST": "127.0.0.1",
            "OTELCOL_OTLP_GRPC_PORT": str(self.otlp_grpc_port),
            "OTELCOL_OTLP_HTTP_PORT": str(self.otlp_http_port),
            "OTELCOL_HEALTH_PORT": str(self.health_port),
            "OTELCOL_METRICS_PORT": str(self.metrics_port),
            **(env or {}),
        }
        super().__init__(config, settings, log_dir)

    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/"


def validate(
    config: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``otelcol validate --config=<file>``: the Collector's own verdict on a config file."""
    return subprocess.run(
        [str(binary("otelcol")), "validate", f"--config={config}"],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
