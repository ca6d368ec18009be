"""The local Roark's call page, rendered by a real headless Chromium after a real call."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import httpx
import pytest

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.devserver import LocalRoark
from pipecat_roark_otel.exporter import RoarkSpanExporter
from pipecat_roark_otel.simulation import run_simulated_call

from .conftest import Otel
from .support import EXPECTED_TURNS, auth_headers

pytestmark = pytest.mark.e2e

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None
)
# Markup in the id: the page must show it as text, never as elements.
CALL_ID = 'call <b>7</b> & "co"'
JAEGER = "http://localhost:16686"


def _chromium() -> str:
    if CHROMIUM is None:
        pytest.skip(
            "no Chromium binary (chromium / chromium-browser) on PATH; "
            "`.ci/run` installs it with `apt-get install -y chromium`"
        )
    return CHROMIUM


def _chromium_dom(url: str, profile: Path) -> str:
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@dataclass
class Page(HTMLParser):
    """What a person sees: the text (no style), the table rows, links and audio players."""

    text: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    audio: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    elements: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    h1: str = ""
    _stack: list[str] = field(default_factory=list)
    _cell: list[str] | None = None
    _row: list[str] | None = None
    _href: str | None = None
    _link_text: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        self.elements.append((tag, a))
        if tag in ("div", "p", "br") and self._cell is not None:
            self._cell.append(" ")  # a block starts a new line
        if tag in ("br", "meta", "source", "img"):
            return
        self._stack.append(tag)
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self._href, self._link_text = a.get("href"), []
        elif tag == "audio":
            self.audio.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop() != tag:
            pass
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._link_text).strip()))
            self._href = None

    def handle_data(self, data: str) -> None:
        if "style" in self._stack or "title" in self._stack:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._href is not None:
            self._link_text.append(data)
        if "h1" in self._stack:
            self.h1 += data

    @property
    def visible(self) -> str:
        return " ".join("".join(self.text).split())


def _page(url: str, profile: Path) -> Page:
    page = Page()
    page.feed(_chromium_dom(url, profile))
    return page


def _ms(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() * 1000


async def test_call_page_shows_the_call(
    exporter: RoarkSpanExporter, roark: LocalRoark, otel: Otel, tmp_path: Path
) -> None:
    _chromium()  # skip before the call, not after it
    observer = RoarkObserver(agent_id="page-bot", agent_name="Copperline Support")
    await run_simulated_call(observer, conversation_id=CALL_ID)
    assert exporter.force_flush(15_000)
    call = roark.wait_for_call_ended(CALL_ID, timeout=15)
    ended = call["ended"]
    url = f"{roark.base_url}/calls/{quote(CALL_ID, safe='')}"

    before = _page(url, tmp_path / "profile")
    assert not [h for h, _ in before.links if "/trace/" in h], "no trace link before one is set"

    trace_id = observer.trace_id
    assert trace_id
    resp = httpx.post(
        f"{roark.base_url}/_dev/calls/{quote(CALL_ID, safe='')}/trace",
        json={"traceId": trace_id, "jaegerUrl": JAEGER},
        headers=auth_headers(roark.api_key),
    )
    assert resp.status_code == 200
    page = _page(url, tmp_path / "profile")

    # The heading names the call; its markup is text, not elements.
    assert page.h1.strip() == f"Call {CALL_ID}"
    assert "b" not in page.tags
    assert "Copperline Support" in page.visible
    assert "agent-ended" in page.visible

    # The timeline: speakers, text, when, how long, audio offsets, latency, in time order.
    header = next(r for r in page.rows if r[:3] == ["at", "speaker", "text"])
    assert header == ["at", "speaker", "text", "duration", "audio", "latency", "timeline"]
    start = page.rows.index(header) + 1
    timeline = page.rows[start : start + len(ended["transcript"]) + 1]
    shown = [(r[1], r[2]) for r in timeline]
    tool = ("tool", 'lookup_order({"order_id":"A-1042"}) → {"status":"shipped"}')
    assert shown == [*EXPECTED_TURNS[:2], tool, *EXPECTED_TURNS[2:]]
    turn_rows = [r for r in timeline if r[1] != "tool"]
    t0 = ended["callStartedAt"]
    previous = None
    for row, turn in zip(turn_rows, ended["transcript"], strict=True):
        at = re.fullmatch(r"(\d+):(\d\d\.\d\d) (\d\d:\d\d:\d\d\.\d{3}) UTC", row[0])
        assert at is not None, row[0]
        relative_s = int(at[1]) * 60 + float(at[2])
        assert abs(relative_s - _ms(t0, turn["timestamp"]) / 1000) < 0.006
        assert at[3] == datetime.fromisoformat(turn["timestamp"]).strftime("%H:%M:%S.%f")[:-3]
        duration = _ms(turn["timestamp"], turn["endTimestamp"]) / 1000
        assert row[3] == f"{duration:.2f} s"
        assert row[4] == f"{turn['audioOffsetMs']}–{turn['endAudioOffsetMs']} ms"
        if turn["role"] == "assistant" and previous and previous["role"] == "user":
            assert row[5] == f"{_ms(previous['endTimestamp'], turn['timestamp']):.0f} ms"
        else:
            assert row[5] == ""
        previous = turn

    # Tool calls in detail.
    tool_header = next(r for r in page.rows if r[:2] == ["tool", "toolCallId"])
    tool_row = page.rows[page.rows.index(tool_header) + 1]
    assert tool_row[0] == "lookup_order"
    assert tool_row[1] == "call_1"
    assert tool_row[3] == '{"order_id":"A-1042"}'
    assert tool_row[4] == '{"status":"shipped"}'

    # An audio player whose source serves the assembled WAV.
    (src,) = page.audio
    wav = httpx.get(urljoin(url, src))
    assert wav.status_code == 200
    assert wav.headers["content-type"] == "audio/wav"
    body = wav.content
    assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt "
    channels, rate = struct.unpack("<HI", body[22:28])
    assert (rate, channels) == (ended["recordingSampleRate"], ended["recordingNumChannels"])
    assert body == roark.wav_bytes(CALL_ID)
    assert (urljoin(url, src), "Download WAV") in [(urljoin(url, h), t) for h, t in page.links]

    # And the way to the call's trace.
    assert (f"{JAEGER}/trace/{trace_id}", "View trace in Jaeger") in page.links

    # The stereo waveform: a user row and a bot row, each turn laid on its own row where its
    # audio is, each reply's latency over it; a tool call is a mark at its moment.
    paths = {a.get("class"): a.get("d") or "" for tag, a in page.elements if tag == "path"}
    assert paths["peaks user"].count("M") == paths["peaks bot"].count("M") == 600
    rects = [a for tag, a in page.elements if tag == "rect" and "turn" in (a.get("class") or "")]
    transcript = ended["transcript"]
    assert [r["class"] for r in rects] == [f"turn {t['role']}" for t in transcript]
    assert [r["data-t"] for r in rects] == [f"{t['audioOffsetMs'] / 1000:.3f}" for t in transcript]
    bot_rows = {float(r["y"] or 0) > 0 for r in rects if r["class"] == "turn assistant"}
    user_rows = {float(r["y"] or 0) > 0 for r in rects if r["class"] == "turn user"}
    assert (bot_rows, user_rows) == ({True}, {False})
    latencies = [r[5] for r in turn_rows if r[5]]
    # Each latency shows twice: in the table and over its reply on the waveform.
    assert latencies and all(page.visible.count(x) == 2 * latencies.count(x) for x in latencies)
    assert sum(tag == "line" and a.get("class") == "tool" for tag, a in page.elements) == 1

    # Clicking a turn (its #t= link) plays the recording from the turn's onset.
    reply = next(t for t in transcript if t["role"] == "assistant" and t["audioOffsetMs"] > 0)
    at = f"{reply['audioOffsetMs'] / 1000:.3f}"
    assert (f"#t={at}", "▶") in page.links
    played = _page(f"{url}#t={at}", tmp_path / "profile")
    (player,) = [a for tag, a in played.elements if tag == "audio"]
    assert player.get("data-seek") == at
    marked = [a for _, a in played.elements if "playing" in (a.get("class") or "")]
    assert marked and all(a.get("data-t") == at for a in marked)


def test_the_simulated_call_prints_how_to_serve_its_page_again(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "examples" / "simulated_call.py"
    data = tmp_path / "dev"
    run = subprocess.run(
        [sys.executable, str(example), "--local", "--speed", "8", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("ROARK_", "OTEL_"))},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    serve = lines[lines.index("serve it again after this script exits:") + 1].split()
    page = lines[lines.index("serve it again after this script exits:") + 2].split()[-1]
    assert serve[:3] == ["python", "-m", "pipecat_roark_otel.devserver"]
    assert serve[serve.index("--data-dir") + 1] == str(data / "roark")
    # The script is gone; its command brings the call's page back (on a free port here).
    serve[serve.index("--port") + 1] = "0"
    with subprocess.Popen([sys.executable, *serve[1:]], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            base = line.split()[line.split().index("on") + 1]
            resp = httpx.get(base + urlsplit(page).path, timeout=30)
        finally:
            proc.terminate()
            proc.wait(30)
    assert resp.status_code == 200
    assert "Your order shipped yesterday and will" in resp.text
    assert 'class="peaks user"' in resp.text
