"""Secrets and privacy: the key stays in two request headers; content reaches Roark only.

The key must never appear in a log line, a span, an exception, a spool file name
or its contents; presigned PUTs carry no auth header; the spool is private.
Third-party exporters get the call without its content (ContentFilteringSpanExporter),
and the redaction hook changes what Roark itself receives.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipecat_roark_otel import semconv
from pipecat_roark_otel.config import RoarkSettings, resolve_settings
from pipecat_roark_otel.exporter import ContentFilteringSpanExporter
from pipecat_roark_otel.exporter._client import RoarkClient, RoarkHTTPError
from pipecat_roark_otel.exporter._items import chunk
from pipecat_roark_otel.exporter._outbox import Outbox, call_key
from pipecat_roark_otel.simulation import run_simulated_call

from .conftest import Otel
from .otlp_receiver import OtlpReceiver
from .support import EXPECTED_TURNS, wait_until
from .test_faults import SCRIPT, Rig, assert_complete, make_rig

pytestmark = pytest.mark.e2e

# Distinctive, so a leak of any part of it is found by a plain substring search.
SECRET = "rk_test_SECRETxq7Zk2PvL9"
WORDS = [
    *(text for _, text in EXPECTED_TURNS),
    *("Copperline", "arriving", "welcome", "A-1042", '"status":"shipped"'),
]


class Sniffer(httpx.BaseTransport):
    """A real HTTP transport that remembers the headers of every request it sends."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.seen.append((request.method, request.url.path, dict(request.headers)))
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def rigs(tmp_path: Path, otel: Otel) -> Iterator[Callable[..., Rig]]:
    closers: list[Callable[[], None]] = []

    def make(**kwargs: Any) -> Rig:
        rig, close = make_rig(tmp_path, otel, api_key=SECRET, **kwargs)
        closers.append(close)
        return rig

    yield make
    for close in closers:
        close()


def _span_texts(spans: list[ReadableSpan]) -> str:
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
        for event in span.events:
            parts += [event.name, *(f"{k}={v}" for k, v in (event.attributes or {}).items())]
        parts += [str(link.attributes) for link in span.links]
    return "\n".join(parts)


def _spool_texts(spool: Path) -> Iterator[tuple[Path, bytes]]:
    for path in spool.rglob("*"):
        yield path, path.read_bytes() if path.is_file() else b""


async def test_key_never_in_logs_spans_or_the_spool(
    rigs: Callable[..., Rig],
    otel: Otel,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    rig = rigs()
    rig.roark.set_api_keys(["rk_test_other"])  # 401 first
    rig.roark.faults.fail_fraction(0.3, 503, seed=4)  # and 5xx throughout
    rig.roark.faults.drop_fraction(0.1, seed=9)
    with caplog.at_level(logging.DEBUG):  # every logger, httpx's request lines included
        await rig.call("secret-1")
        wait_until(lambda: rig.engine.stats()["auth_paused"], what="auth pause")
        # Mid-call state on disk: the spool holds items, names and logs of a pending call.
        on_disk = list(_spool_texts(rig.spool))
        rig.roark.set_api_keys([SECRET])
        rig.flush()
    assert_complete(rig, "secret-1")
    assert any("rejected the API key" in r.getMessage() for r in caplog.records)
    assert "HTTP 401" in caplog.text and " 503 " in caplog.text  # both paths were logged
    out, err = capfd.readouterr()  # loguru (Pipecat) writes to stderr directly
    for where, text in (("logs", caplog.text), ("stdout", out), ("stderr", err)):
        assert SECRET not in text, f"API key in {where}"
    assert SECRET not in _span_texts(otel.spans())
    assert on_disk and any(p.name == "end.json" for p, _ in on_disk)
    for path, data in [*on_disk, *_spool_texts(rig.spool)]:
        assert SECRET not in str(path.relative_to(rig.spool)), path
        assert SECRET.encode() not in data, path


def test_key_never_in_exceptions_or_reprs(tmp_path: Path) -> None:
    from pipecat_roark_otel.devserver import LocalRoark

    settings = RoarkSettings(api_key=SECRET, base_url="http://127.0.0.1:9", spool_dir=tmp_path)
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    with LocalRoark(data_dir=tmp_path / "roark", api_key="rk_test_other") as roark:
        client = RoarkClient(
            RoarkSettings(api_key=SECRET, base_url=roark.base_url, spool_dir=tmp_path)
        )
        errors: list[RoarkHTTPError] = []
        with pytest.raises(RoarkHTTPError) as refused:
            client.post_event({"event": "call-started"})
        errors.append(refused.value)
        roark.faults.fail_next(1, 500)
        with pytest.raises(RoarkHTTPError) as failed:
            client.presign("c1", 0)
        errors.append(failed.value)
        client.close()
    unreachable = RoarkClient(settings, timeout=0.5)
    signed = f"http://127.0.0.1:9/_s3/x/0.pcm?X-Roark-Signature={SECRET}"
    for attempt in (
        lambda: unreachable.post_event({"event": "call-started"}),
        lambda: unreachable.put_chunk(signed, b"\0\0"),
    ):
        with pytest.raises(RoarkHTTPError) as network:
            attempt()
        errors.append(network.value)
    unreachable.close()
    assert [e.status for e in errors] == [401, 500, None, None]
    for exc in errors:
        text = f"{exc} {exc!r} {exc.message} {exc.args} {exc.__cause__} {exc.__context__}"
        assert SECRET not in text and "Signature" not in text
    with pytest.raises(ValueError) as bad:
        resolve_settings(api_key=SECRET + " tail", base_url="http://x.test")
    assert SECRET not in str(bad.value)


async def test_presigned_puts_carry_no_auth_header(rigs: Callable[..., Rig]) -> None:
    sniffer = Sniffer()
    rig = rigs(transport=sniffer)
    await rig.call("puts-1")
    rig.flush()
    assert_complete(rig, "puts-1")
    puts = [h for method, _, h in sniffer.seen if method == "PUT"]
    api = [h for method, _, h in sniffer.seen if method == "POST"]
    assert puts and api
    for headers in puts:
        assert not {"authorization", "x-roark-api-key"} & {k.lower() for k in headers}
        assert SECRET not in " ".join(headers.values())
    for headers in api:
        assert headers["x-roark-api-key"] == SECRET
        assert headers["authorization"] == f"Bearer {SECRET}"
    # And the receiver agrees: a PUT with an auth header would have been a 400.
    uploads = [r for r in rig.roark.requests("puts-1") if r["endpoint"] == "upload"]
    assert uploads and {r["status"] for r in uploads} == {200}


async def test_presigned_urls_never_reach_any_log_at_any_level(
    rigs: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """Request lines (httpx's at INFO, our own client's at DEBUG) carry no presigned query."""
    rig = rigs()
    with caplog.at_level(logging.DEBUG):
        await rig.call("urls-1")
        rig.flush()
    assert_complete(rig, "urls-1")
    loggers = ("httpx", "pipecat_roark_otel.http")
    puts = [r.getMessage() for r in caplog.records if r.name in loggers and "PUT" in r.getMessage()]
    assert puts, "no request line logged for a PUT: the test proves nothing"
    # Neither side logs one: our sender nor the local Roark (where S3's access log would be).
    assert not [r for r in caplog.records if "X-Roark-" in r.getMessage()]  # its signature
    assert not any("?" in line for line in puts), puts


def test_spool_dir_and_everything_below_it_is_private(tmp_path: Path) -> None:
    old = os.umask(0o002)  # a permissive umask must not widen the spool
    try:
        spool = tmp_path / "spool"
        outbox = Outbox(spool)
        outbox.put_started("c1", {"pipecatCallId": "c1"})
        outbox.put_chunk("c1", 0, b"\0\0", sample_rate=16000, num_channels=2)
        outbox.dead_letter(call_key("c1"), [chunk(0)], status=422, message="no", now=0.0)
        outbox.put_chunk("c1", 1, b"\0\0")
        outbox.mark_sent(call_key("c1"), chunk(1))  # its file kept aside for the next chunk
    finally:
        os.umask(old)
    dirs = [spool, *(p for p in spool.rglob("*") if p.is_dir())]
    assert len(dirs) >= 5 and outbox.spare_dir in dirs
    for d in dirs:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


# -- content: kept from third parties, redactable for Roark ------------------------------------


async def test_third_party_exporters_get_no_content_while_roark_gets_the_call(
    rigs: Callable[..., Rig], otel: Otel
) -> None:
    rig = rigs()
    jaeger = InMemorySpanExporter()
    otel.add(SimpleSpanProcessor(ContentFilteringSpanExporter(jaeger)))
    with OtlpReceiver() as receiver:
        otlp = SimpleSpanProcessor(
            ContentFilteringSpanExporter(OTLPSpanExporter(endpoint=receiver.traces_url))
        )
        otel.add(otlp)
        await rig.call("private-1")
        otlp.force_flush()
        wire = receiver.spans()
    rig.flush()
    call = assert_complete(rig, "private-1")  # Roark: the whole call, content and all
    assert call["ended"]["toolCalls"][0]["arguments"] == '{"order_id":"A-1042"}'

    filtered = jaeger.get_finished_spans()
    ours = [s for s in filtered if s.name in semconv.SPAN_NAMES]
    assert {s.name for s in ours} == set(semconv.SPAN_NAMES)
    events = [e for s in ours for e in s.events]
    assert sum(e.name == semconv.EVENT_TURN for e in events) == len(EXPECTED_TURNS)
    # Structure stays (roles, ids, timing); content goes.
    assert all(semconv.TURN_ROLE in (e.attributes or {}) for e in events if e.name == "roark.turn")
    text = _span_texts(list(filtered))
    wire_text = "\n".join(f"{k}={v}" for s in wire for k, v in s.attributes.items())
    assert [s for s in wire if s.name == semconv.SPAN_CALL]
    for word in WORDS:
        assert word not in text, f"{word!r} reached the third-party exporter"
        assert word not in wire_text, f"{word!r} went over OTLP"
    for name in semconv.CONTENT_ATTRIBUTES:
        assert f"{name}=" not in text and f"{name}=" not in wire_text
    # The unfiltered record (Roark's) did carry it: the filter is what removed it.
    assert "Copperline" in _span_texts(otel.spans())


async def test_redact_hook_changes_what_roark_receives(rigs: Callable[..., Rig]) -> None:
    rig = rigs()

    def redact(text: str) -> str:
        return re.sub(r"\d", "#", text.replace("order", "[item]"))

    observer = rig.observer("redacted-1", redact=redact)
    await run_simulated_call(observer, script=SCRIPT)
    rig.flush()
    ended = rig.roark.wait_for_call_ended("redacted-1", timeout=30)["ended"]
    contents = [t["content"] for t in ended["transcript"]]
    assert contents == [redact(text) for _, text in EXPECTED_TURNS]
    assert "I'd like to check on my [item]" in contents
    tool_call, tool_result = ended["toolCalls"]
    assert tool_call["arguments"] == '{"[item]_id":"A-####"}'
    assert tool_result["content"] == '{"status":"shipped"}'
    assert tool_call["name"] == "lookup_order"  # names are not content
    wav = rig.roark.wav_bytes("redacted-1")
    assert wav is not None and wav[44:] == b"".join(rig.recorded["redacted-1"])
