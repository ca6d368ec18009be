"""The HTML pages: a call list and a call page. Pure functions of the stored call dicts."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from ._waveform import CSS as _WAVE_CSS
from ._waveform import SEEK_SCRIPT, render_waveform, seek_target

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d2430;padding:0 1rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #dde2ea}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;
border-bottom:1px solid #eef1f5;vertical-align:top}
th{font-weight:600;color:#566173;font-size:.85rem}
.user{color:#0b5cad}.assistant{color:#7a3db8}.system{color:#6b7280}
.mono{font-family:ui-monospace,Menlo,monospace;font-size:.85rem}
.flag{background:#fff1d6;color:#8a5300;border-radius:4px;padding:0 .4rem;margin-right:.3rem}
.muted{color:#8a94a6}pre{white-space:pre-wrap;word-break:break-word;margin:0}
a{color:#0b5cad}code{font-family:ui-monospace,Menlo,monospace;font-size:.85rem}
.at{white-space:nowrap}.at .muted{font-size:.75rem}.who{font-weight:600}.tool{color:#9a5b00}
.timeline .mono{white-space:nowrap}
tr.tool{background:#fffaf0}.lane{width:22%;min-width:120px}
.track{position:relative;height:10px;background:#eef1f5;border-radius:5px;margin-top:.4rem}
.bar{position:absolute;top:0;height:10px;border-radius:5px;background:#8a94a6}
.bar.user{background:#0b5cad}.bar.assistant{background:#7a3db8}.bar.tool{background:#d98a00}
"""


def _e(value: object) -> str:
    return "" if value is None else escape(str(value))


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}{_WAVE_CSS}</style></head>"
        f"<body>{body}</body></html>"
    )


def _flags(flags: list[str]) -> str:
    return "".join(f'<span class="flag">{_e(f)}</span>' for f in flags)


def call_href(call_id: str) -> str:
    return "/calls/" + quote(call_id, safe="")


def render_index(calls: list[dict[str, Any]]) -> str:
    rows = "".join(
        f'<tr><td><a class="mono" href="{_e(call_href(c["pipecatCallId"]))}">'
        f"{_e(c['pipecatCallId'])}</a></td><td>{_e(c['status'])}</td>"
        f"<td>{_e(c['agentName'] or c['agentId'])}</td><td class=mono>{_e(c['callStartedAt'])}"
        f"</td><td>{_e(c['callEndedReason'])}</td><td>{c['chunkCount']}</td>"
        f"<td>{'yes' if c['hasRecording'] else ''}</td><td>{_flags(c['flags'])}</td></tr>"
        for c in calls
    )
    head = (
        "<tr><th>call</th><th>status</th><th>agent</th><th>started</th><th>end reason</th>"
        "<th>chunks</th><th>recording</th><th>flags</th></tr>"
    )
    table = f"<table>{head}{rows}</table>" if calls else '<p class="muted">No calls yet.</p>'
    return _page("Local Roark", f"<h1>Local Roark — calls</h1>{table}")


def _parse(ts: object) -> datetime | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts[:-1] + "+00:00" if ts.endswith("Z") else ts)
    except ValueError:
        return None


def _latencies(turns: list[dict[str, Any]]) -> list[str]:
    """Per turn: for an assistant turn right after a user turn, the gap from user end to onset."""
    out = []
    for i, turn in enumerate(turns):
        prev = turns[i - 1] if i else None
        text = ""
        if turn.get("role") == "assistant" and prev and prev.get("role") == "user":
            end, onset = _parse(prev.get("endTimestamp")), _parse(turn.get("timestamp"))
            if end is not None and onset is not None:
                text = f"{(onset - end).total_seconds() * 1000:.0f} ms"
        out.append(text)
    return out


def _offsets(turn: dict[str, Any]) -> str:
    start, end = turn.get("audioOffsetMs"), turn.get("endAudioOffsetMs")
    if start is None and end is None:
        return ""
    return f"{_e(start)}–{_e(end)} ms"


def _clock(seconds: float) -> str:
    """Seconds since the call started as ``m:ss.ss``."""
    sign = "-" if seconds < 0 else ""
    minutes, secs = divmod(abs(seconds), 60)
    return f"{sign}{int(minutes)}:{secs:05.2f}"


def _when(ts: object, t0: datetime | None) -> str:
    """Relative time (with the wall clock under it, the raw timestamp on hover)."""
    at = _parse(ts)
    if at is None:
        return f"<td class=mono>{_e(ts)}</td>"
    rel = _clock((at - t0).total_seconds()) if t0 is not None else ""
    return (
        f'<td class="mono at" title="{_e(ts)}">{rel}'
        f'<div class="muted">{_e(at.strftime("%H:%M:%S.%f")[:-3])} UTC</div></td>'
    )


def _play(turn: dict[str, Any]) -> str:
    """A link that plays the recording from this turn's onset."""
    target = seek_target(turn.get("audioOffsetMs"))
    if target is None:
        return ""
    return f'<a class=play href="#t={target}" data-t="{target}" title="play from here">▶</a>'


def _bar(
    start: object, end: object, t0: datetime | None, span_s: float, cls: str, extra: str = ""
) -> str:
    """Where the row sits in the call, as a bar on a track (plain CSS percentages)."""
    a, b = _parse(start), _parse(end) or _parse(start)
    if t0 is None or a is None or b is None or span_s <= 0:
        return f"<td>{extra}</td>"
    left = min(max((a - t0).total_seconds() / span_s, 0.0), 1.0) * 100
    width = max(min((b - a).total_seconds() / span_s * 100, 100 - left), 0.4)
    return (
        f'<td class=lane><div class=track><div class="bar {cls}" '
        f'style="left:{left:.2f}%;width:{width:.2f}%"></div></div>{extra}</td>'
    )


def _duration(start: object, end: object) -> str:
    a, b = _parse(start), _parse(end)
    return f"{(b - a).total_seconds():.2f} s" if a is not None and b is not None else ""


def _timeline(
    turns: list[dict[str, Any]], tools: list[dict[str, Any]], t0: datetime | None, end: object
) -> str:
    """Turns and tool calls in time order: when, who, what, how long, latency."""
    if not turns and not tools:
        return '<p class="muted">No transcript.</p>'
    stamps = [_parse(t.get("endTimestamp")) for t in turns] + [_parse(end)]
    last = max((x for x in stamps if x is not None), default=None)
    span_s = (last - t0).total_seconds() if last is not None and t0 is not None else 0.0
    results = {r.get("toolCallId"): r for r in tools if r.get("kind") == "tool_result"}
    rows: list[tuple[datetime | None, int, str]] = []
    for i, (t, lat) in enumerate(zip(turns, _latencies(turns), strict=True)):
        role = _e(t.get("role"))
        rows.append(
            (
                _parse(t.get("timestamp")),
                i,
                f'<tr class="turn">{_when(t.get("timestamp"), t0)}'
                f'<td class="who {role}">{role}</td><td class=text>{_e(t.get("content"))}</td>'
                f"<td class=mono>{_duration(t.get('timestamp'), t.get('endTimestamp'))}</td>"
                f"<td class=mono>{_offsets(t)}</td><td class=mono>{lat}</td>"
                f"{_bar(t.get('timestamp'), t.get('endTimestamp'), t0, span_s, role, _play(t))}"
                "</tr>",
            )
        )
    for j, r in enumerate(tools):
        if r.get("kind") != "tool_call":
            continue
        res = results.get(r.get("toolCallId"))
        outcome = (
            f" → <code>{_e(res.get('content'))}</code>"
            if res
            else ' <span class="flag">no result</span>'
        )
        rows.append(
            (
                _parse(r.get("timestamp")),
                len(turns) + j,
                f'<tr class="tool">{_when(r.get("timestamp"), t0)}<td class="who tool">tool</td>'
                f"<td class=text><code>{_e(r.get('name'))}({_e(r.get('arguments'))})</code>"
                f"{outcome}</td><td></td><td class=mono>{_e(r.get('audioOffsetMs'))}"
                f"{' ms' if r.get('audioOffsetMs') is not None else ''}</td><td></td>"
                f"{_bar(r.get('timestamp'), None, t0, span_s, 'tool')}</tr>",
            )
        )
    # Time order; rows without a parseable time keep their place at the end.
    rows.sort(key=lambda row: (0, row[0].timestamp(), row[1]) if row[0] else (1, 0.0, row[1]))
    head = (
        "<tr><th>at</th><th>speaker</th><th>text</th><th>duration</th><th>audio</th>"
        "<th>latency</th><th>timeline</th></tr>"
    )
    return f"<table class=timeline>{head}{''.join(r[2] for r in rows)}</table>"


def _tools(records: list[dict[str, Any]]) -> str:
    if not records:
        return '<p class="muted">No tool calls.</p>'
    results = {r["toolCallId"]: r for r in records if r.get("kind") == "tool_result"}
    called = {r["toolCallId"] for r in records if r.get("kind") == "tool_call"}
    head = (
        "<tr><th>tool</th><th>toolCallId</th><th>timestamp</th><th>arguments</th>"
        "<th>result</th></tr>"
    )
    rows = []
    for r in records:
        if r.get("kind") == "tool_call":
            res = results.get(r["toolCallId"])
            result = (
                f"<pre>{_e(res.get('content'))}</pre>"
                if res
                else '<span class="flag">no result</span>'
            )
            rows.append(
                f"<tr><td>{_e(r.get('name'))}</td><td class=mono>{_e(r['toolCallId'])}</td>"
                f"<td class=mono>{_e(r.get('timestamp'))}</td>"
                f"<td><pre class=mono>{_e(r.get('arguments'))}</pre></td><td>{result}</td></tr>"
            )
        elif r["toolCallId"] not in called:
            rows.append(
                f'<tr><td><span class="flag">result without call</span></td>'
                f"<td class=mono>{_e(r['toolCallId'])}</td>"
                f"<td class=mono>{_e(r.get('timestamp'))}</td><td></td>"
                f"<td><pre>{_e(r.get('content'))}</pre></td></tr>"
            )
    return f"<table>{head}{''.join(rows)}</table>"


def render_call(call: dict[str, Any], peaks: dict[str, Any] | None = None) -> str:
    """The call page; ``peaks`` (``Store.peaks``) adds the waveform with turns laid on it."""
    call_id = call["pipecatCallId"]
    started, ended = call["started"] or {}, call["ended"] or {}
    facts = [
        ("status", call["status"]),
        ("agent", started.get("agentName") or started.get("agentId")),
        ("agentId", started.get("agentId")),
        ("started", ended.get("callStartedAt") or started.get("eventTimestamp")),
        ("ended", ended.get("callEndedAt")),
        ("end reason", ended.get("callEndedReason")),
        ("agent spoke first", ended.get("agentSpokeFirst")),
        ("recording", _recording_facts(ended, call)),
        ("duplicates", _dups(call["duplicates"])),
        ("missing chunks", ", ".join(map(str, call["missing_chunks"]))),
        ("late chunks", ", ".join(map(str, call["late_chunks"]))),
    ]
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts if v not in (None, "")
    )
    parts = [
        '<p><a href="/">← all calls</a></p>',
        f'<h1>Call <span class="mono">{_e(call_id)}</span> {_flags(call["flags"])}</h1>',
        f"<table>{rows}</table>",
    ]
    if call["traceId"]:
        url = f"{call['jaegerUrl'].rstrip('/')}/trace/{quote(call['traceId'], safe='')}"
        parts.append(f'<p><a href="{_e(url)}">View trace in Jaeger</a></p>')
    t0 = _parse(ended.get("callStartedAt") or started.get("eventTimestamp"))
    turns, tools = ended.get("transcript") or [], ended.get("toolCalls") or []
    if call["wav_path"]:
        src = "/api/calls/" + quote(call_id, safe="") + "/recording.wav"
        wave = render_waveform(peaks, turns, tools, _latencies(turns)) if peaks else ""
        parts.append(
            f'<h2>Recording</h2>{wave}<audio id="player" controls preload="none" '
            f'src="{_e(src)}"></audio><p><a href="{_e(src)}" download>Download WAV</a></p>'
            f"<script>{SEEK_SCRIPT}</script>"
        )
    if started.get("agentPrompt"):
        parts.append(f"<h2>Agent prompt</h2><pre>{_e(started['agentPrompt'])}</pre>")
    parts.append("<h2>Transcript</h2>" + _timeline(turns, tools, t0, ended.get("callEndedAt")))
    parts.append("<h2>Tool calls</h2>" + _tools(tools))
    return _page(f"Call {call_id}", "".join(parts))


def _recording_facts(ended: dict[str, Any], call: dict[str, Any]) -> str:
    rate, channels = ended.get("recordingSampleRate"), ended.get("recordingNumChannels")
    total = sum(call["chunks"].values())
    if rate is None:
        return f"{len(call['chunks'])} chunks, {total} bytes" if call["chunks"] else ""
    secs = total / (2 * channels * rate) if channels else 0.0
    return f"{rate} Hz × {channels} ch, {len(call['chunks'])} chunks, {total} bytes ({secs:.1f} s)"


def _dups(d: dict[str, Any]) -> str:
    parts = [f"{k}: {v}" for k, v in d.items() if v]
    return "; ".join(parts)
