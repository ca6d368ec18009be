"""docker-compose.otel.yml is consistent: services, ports, collector config, who talks to whom.

No Docker engine here, so the file is checked as data: every address a service is
given must name a service of the stack and a port that service really listens on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.otel.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def collector_config(services: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(_collector_config_path(services).read_text())


def _published(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    out = {}
    for spec in service.get("ports", []):
        host, container = str(spec).split(":")[-2:]
        out[int(host)] = int(container.split("/")[0])
    return out


def _listens(service: dict[str, Any]) -> set[int]:
    """Container ports the service offers to the network (published or exposed)."""
    return set(_published(service).values()) | {int(p) for p in service.get("expose", [])}


def _arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _collector_config_path(services: dict[str, Any]) -> Path:
    svc = services["otel-collector"]
    config_arg = next(a for a in svc["command"] if a.startswith("--config="))
    target = config_arg.removeprefix("--config=")
    for volume in svc["volumes"]:
        source, mounted = volume.split(":")[:2]
        if mounted == target:
            assert source.startswith("./"), "the collector config is a file in the repo"
            return ROOT / source
    raise AssertionError(f"no volume mounts the collector config at {target}")


def test_services(services: dict[str, Any], compose: dict[str, Any]) -> None:
    assert set(services) == {"jaeger", "otel-collector", "roark", "simulated-call"}
    image = services["jaeger"]["image"]
    assert image.split("/")[-1].startswith("jaeger:2."), f"Jaeger v2 all-in-one, got {image}"
    assert services["otel-collector"]["image"].startswith("otel/opentelemetry-collector")
    for name in ("roark", "simulated-call"):
        build = services[name]["build"]
        dockerfile = ROOT / build["context"] / build["dockerfile"]
        assert dockerfile.is_file()
    assert set(compose.get("volumes", {})) == {"roark-data"}


def test_host_ports(services: dict[str, Any]) -> None:
    hosts = [p for s in services.values() for p in _published(s)]
    assert len(hosts) == len(set(hosts)), f"a host port is published twice: {sorted(hosts)}"
    assert _published(services["jaeger"]) == {16686: 16686}
    assert _published(services["otel-collector"]) == {4317: 4317, 4318: 4318}
    assert _published(services["roark"]) == {8787: 8787}
    # Jaeger takes OTLP on both ports inside the network, behind the collector.
    assert {4317, 4318} <= _listens(services["jaeger"])


def test_collector_config_is_a_real_file_with_the_pipeline_wired(
    services: dict[str, Any], collector_config: dict[str, Any]
) -> None:
    cfg = collector_config
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    # What the collector listens on is what compose publishes.
    listening = {int(p["endpoint"].rsplit(":", 1)[1]) for p in protocols.values()}
    assert listening == set(_published(services["otel-collector"]).values())

    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    assert traces["processors"] == ["batch"]
    # Every component a pipeline names is defined, and every defined one is used.
    for kind in ("receivers", "processors", "exporters"):
        used = {c for p in cfg["service"]["pipelines"].values() for c in p.get(kind, [])}
        assert used == set(cfg.get(kind) or {}), kind

    otlp = [e for e in traces["exporters"] if e.split("/")[0] in ("otlp", "otlp_grpc")]
    assert len(otlp) == 1, traces["exporters"]
    assert "debug" in traces["exporters"]
    jaeger = cfg["exporters"][otlp[0]]
    host, port = jaeger["endpoint"].rsplit(":", 1)
    assert host == "jaeger" and host in services
    assert int(port) == 4317 and int(port) in _listens(services[host])
    assert jaeger["tls"]["insecure"] is True
    assert "jaeger" in services["otel-collector"]["depends_on"]


def test_roark_service(services: dict[str, Any]) -> None:
    roark = services["roark"]
    cmd = [str(a) for a in roark["command"]]
    assert cmd[:3] == ["python", "-m", "pipecat_roark_otel.devserver"]
    assert _arg(cmd, "--host") == "0.0.0.0"
    assert int(_arg(cmd, "--port")) in _published(roark).values()
    data_dir = _arg(cmd, "--data-dir")
    assert f"roark-data:{data_dir}" in roark["volumes"]
    assert roark["environment"]["ROARK_JAEGER_URL"] == "http://localhost:16686"
    probe = " ".join(roark["healthcheck"]["test"])
    assert f":{_arg(cmd, '--port')}/" in probe


def test_simulated_call_points_at_the_stack(services: dict[str, Any]) -> None:
    sim, roark = services["simulated-call"], services["roark"]
    env = sim["environment"]
    roark_cmd = [str(a) for a in roark["command"]]
    assert sim["command"] == ["python", "examples/simulated_call.py"]
    assert (ROOT / "examples" / "simulated_call.py").is_file()

    base = urlsplit(env["ROARK_BASE_URL"])
    assert base.scheme == "http" and base.hostname == "roark"
    assert base.port == int(_arg(roark_cmd, "--port"))
    assert env["ROARK_API_KEY"] == _arg(roark_cmd, "--api-key") == "rk_test_local"

    otlp = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert otlp.hostname == "otel-collector" and otlp.hostname in services
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert otlp.port == 4318 and otlp.port in _listens(services["otel-collector"])
    assert env["OTEL_SERVICE_NAME"] == "simulated-call"

    # Links are for a browser on the host: Jaeger's published UI port.
    jaeger_ui = urlsplit(env["ROARK_JAEGER_URL"])
    assert jaeger_ui.hostname == "localhost"
    assert jaeger_ui.port in _published(services["jaeger"])

    assert sim["depends_on"]["roark"]["condition"] == "service_healthy"
    assert "otel-collector" in sim["depends_on"]


def test_dockerfile_installs_the_package() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert "pip install -e '.[otlp]'" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies a missing path: {src}"


def test_compose_cli_accepts_the_file() -> None:
    cli = None
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        cli = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        cli = ["docker-compose"]
    if cli is None:
        pytest.skip("no `docker compose` plugin or docker-compose binary to validate with")
    proc = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
