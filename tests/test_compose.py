"""docker-compose.otel.yml is consistent: services, ports, collector config, who talks to whom.

No Docker engine here, so the file is checked as data: every address a service is
given must name a service of the stack and a port that service really listens on.
The Collector and Jaeger config files it mounts are the ones the suite runs for real
(tests/test_collector.py, tests/test_jaeger.py); here they are read as compose runs
them, each ``${env:NAME:-default}`` taking the service's environment or its default.
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

from .otelbin import binary

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.otel.yml"
BINARIES_SCRIPT = ROOT / "scripts" / "otel-binaries.sh"
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
    return _as_compose_runs(services["otel-collector"])


@pytest.fixture(scope="module")
def jaeger_config(services: dict[str, Any]) -> dict[str, Any]:
    return _as_compose_runs(services["jaeger"])


def _expand(text: str, env: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        if m.group(1) in env:
            return str(env[m.group(1)])
        assert m.group(2) is not None, f"${{env:{m.group(1)}}} has no default and compose sets none"
        return m.group(2)

    return _ENV_REF.sub(value, text)


def _as_compose_runs(service: dict[str, Any]) -> dict[str, Any]:
    """The service's mounted config file, its ``${env:...}`` resolved as in the container."""
    text = _config_path(service).read_text()
    doc = yaml.safe_load(_expand(text, service.get("environment") or {}))
    assert isinstance(doc, dict)
    return doc


def _script_pin(name: str) -> str:
    found = re.search(rf"^{name}=v(\S+)$", BINARIES_SCRIPT.read_text(), re.MULTILINE)
    assert found, f"{name} not pinned in {BINARIES_SCRIPT.name}"
    return found.group(1)


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


def _config_path(svc: dict[str, Any]) -> Path:
    config_arg = next(a for a in svc["command"] if a.startswith("--config="))
    target = config_arg.removeprefix("--config=")
    for volume in svc["volumes"]:
        source, mounted = volume.split(":")[:2]
        if mounted == target:
            assert source.startswith("./deploy/"), "the config is a file in the repo's deploy/"
            return ROOT / source
    raise AssertionError(f"no volume mounts the config at {target}")


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _defined_and_used(cfg: dict[str, Any]) -> None:
    """Every component a pipeline names is defined, and every defined one is used."""
    for kind in ("receivers", "processors", "exporters"):
        used = {c for p in cfg["service"]["pipelines"].values() for c in p.get(kind, [])}
        assert used == set(cfg.get(kind) or {}), kind
    assert set(cfg["service"].get("extensions", [])) == set(cfg.get("extensions") or {})


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


def test_images_are_the_releases_the_tests_build(services: dict[str, Any]) -> None:
    """Compose runs the Collector and Jaeger releases scripts/otel-binaries.sh builds."""
    collector = services["otel-collector"]["image"]
    assert collector == f"otel/opentelemetry-collector-contrib:{_script_pin('OTELCOL_VERSION')}"
    # Jaeger's Go module tags v1.N; the v2 image of the same release is 2.(N-63).
    minor = int(_script_pin("JAEGER_VERSION").split(".")[1])
    assert services["jaeger"]["image"] == f"jaegertracing/jaeger:2.{minor - 63}.0"
    assert f"v1.{minor}.0 is Jaeger v2.{minor - 63}.0" in BINARIES_SCRIPT.read_text()


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
    listening = {_port(p["endpoint"]) for p in protocols.values()}
    assert listening == set(_published(services["otel-collector"]).values())

    traces = cfg["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    assert traces["processors"] == ["memory_limiter", "batch"]
    _defined_and_used(cfg)

    otlp = [e for e in traces["exporters"] if e.split("/")[0] in ("otlp", "otlp_grpc")]
    assert len(otlp) == 1, traces["exporters"]
    assert "debug" in traces["exporters"]
    jaeger = cfg["exporters"][otlp[0]]
    host, port = jaeger["endpoint"].rsplit(":", 1)
    assert host == "jaeger" and host in services
    assert int(port) == 4317 and int(port) in _listens(services[host])
    assert jaeger["tls"]["insecure"] is True
    assert "jaeger" in services["otel-collector"]["depends_on"]


def test_jaeger_config_is_a_real_file_listening_where_compose_says(
    services: dict[str, Any], jaeger_config: dict[str, Any]
) -> None:
    cfg = jaeger_config
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert {_port(p["endpoint"]) for p in protocols.values()} == {4317, 4318}
    query = cfg["extensions"]["jaeger_query"]
    # Reachable from the other containers and the host: compose sets the listen host.
    for endpoint in [p["endpoint"] for p in protocols.values()] + [query["http"]["endpoint"]]:
        assert endpoint.startswith("0.0.0.0:"), endpoint
    assert _port(query["http"]["endpoint"]) in _published(services["jaeger"]).values()
    storage = cfg["extensions"]["jaeger_storage"]["backends"][query["storage"]["traces"]]
    assert set(storage) == {"memory"}
    _defined_and_used(cfg)


def test_fleet_collector_config_routes_traces_and_logs_by_trace_id() -> None:
    """The fleet Collector: both signals through the load balancer, queued on disk."""
    text = (ROOT / "deploy" / "otel-collector-fleet.yaml").read_text()
    cfg = yaml.safe_load(_expand(text, {"ROARK_BRIDGE_TOKEN": "required, no default"}))
    _defined_and_used(cfg)
    pipelines = cfg["service"]["pipelines"]
    assert set(pipelines) == {"traces", "logs"}
    (lb_name,) = {e for p in pipelines.values() for e in p["exporters"]}
    assert all(p["exporters"] == [lb_name] for p in pipelines.values())
    lb = cfg["exporters"][lb_name]
    assert lb_name.split("/")[0] == "load_balancing"
    assert lb["routing_key"] == "traceID"
    assert "otlp" in lb["protocol"]  # OTLP/gRPC: what the bridges must speak
    # ROARK_BRIDGE_ENDPOINTS is a YAML list; its default, two bridges on the OTLP/gRPC port.
    hostnames = lb["resolver"]["static"]["hostnames"]
    assert isinstance(hostnames, list) and len(hostnames) == 2
    assert {_port(h) for h in hostnames} == {4317}
    queue = lb["sending_queue"]
    assert queue["enabled"] is True
    assert queue["storage"] in cfg["extensions"]
    assert queue["storage"].split("/")[0] == "file_storage"
    assert lb["retry_on_failure"]["enabled"] is True
    # One queue, on disk: the per-bridge exporters hold nothing in memory.
    assert lb["protocol"]["otlp"]["sending_queue"]["enabled"] is False


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


def _compose_cli() -> list[str]:
    """`docker compose` or a standalone Compose v2+; else scripts/otel-binaries.sh builds one."""
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]):
            version = subprocess.run(
                [*cli, "version", "--short"], capture_output=True, text=True, check=False
            )
            # Compose v1 (Debian's docker-compose 1.29) predates the Compose Spec's `name:`.
            if version.returncode == 0 and not version.stdout.lstrip("v").startswith("1."):
                return cli
    return [str(binary("docker-compose"))]


def test_compose_cli_accepts_the_file() -> None:
    """Compose's own verdict; `config` reads the file and needs no Docker engine."""
    proc = subprocess.run(
        [*_compose_cli(), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
