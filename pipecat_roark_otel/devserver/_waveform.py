"""The call page's stereo waveform: user and bot rows, turns and tool calls laid on them; pure."""

from __future__ import annotations

from html import escape
from typing import Any

CSS = """
.wave{position:relative;margin:.6rem 0 1.4rem}
.wave svg{display:block;width:100%;height:132px;background:#f7f8fb;border-radius:6px}
.wave .peaks{stroke-width:1;vector-effect:non-scaling-stroke}
.wave .peaks.user{stroke:#0b5cad}.wave .peaks.bot{stroke:#7a3db8}
.wave rect.turn{fill-opacity:.16;cursor:pointer}.wave rect.turn:hover{fill-opacity:.3}
.wave rect.user{fill:#0b5cad}.wave rect.assistant{fill:#7a3db8}.wave rect.system{fill:#6b7280}
.wave line.tool{stroke:#d98a00;stroke-width:2;vector-effect:non-scaling-stroke}
.wave .rows{position:absolute;left:.4rem;top:.2rem;font-size:.75rem;color:#566173;line-height:66px}
.wave .lat{position:absolute;top:-1.1rem;font-size:.72rem;color:#7a3db8;white-space:nowrap}
.playing,.wave rect.playing{outline:2px solid #d98a00}
a.play{text-decoration:none;margin-left:.3rem}
"""

# Clicking a turn (a ``#t=<seconds>`` link) plays the recording from there.
SEEK_SCRIPT = """
(function(){var a=document.getElementById('player');if(!a)return;
function go(){var m=/^#t=([0-9]+(?:\\.[0-9]+)?)$/.exec(location.hash);if(!m)return;
a.dataset.seek=m[1];try{a.currentTime=parseFloat(m[1]);}catch(e){}
document.querySelectorAll('[data-t]').forEach(function(el){
el.classList.toggle('playing',el.getAttribute('data-t')===m[1]);});
var p=a.play();if(p&&p.catch)p.catch(function(){});}
window.addEventListener('hashchange',go);go();})();
"""

_ROW = 66.0  # height of each channel's row in SVG units (two rows: 132)


def seek_target(offset_ms: object) -> str | None:
    """The ``#t=`` value for an audio offset, or None if there is none."""
    if not isinstance(offset_ms, int) or isinstance(offset_ms, bool) or offset_ms < 0:
        return None
    return f"{offset_ms / 1000:.3f}"


def _peaks_path(peaks: list[float], row: int) -> str:
    mid, half = row * _ROW + _ROW / 2, _ROW / 2 - 3
    return "".join(
        f"M{x} {mid - h:.1f}V{mid + h:.1f}"
        for x, p in enumerate(peaks)
        for h in (max(min(p, 1.0) * half, 0.5),)
    )


def render_waveform(
    peaks: dict[str, Any],
    turns: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    latencies: list[str],
) -> str:
    """An SVG of both channels (L user, R bot) with each turn a clickable span on its row."""
    channels: list[list[float]] = peaks["channels"]
    duration = max(int(peaks["durationMs"]), 1)
    width = len(channels[0])
    bot = channels[1] if len(channels) > 1 else channels[0]
    parts = [
        f'<path class="peaks user" d="{_peaks_path(channels[0], 0)}"/>',
        f'<path class="peaks bot" d="{_peaks_path(bot, 1)}"/>',
    ]
    labels = []
    for turn, latency in zip(turns, latencies, strict=True):
        start, end = turn.get("audioOffsetMs"), turn.get("endAudioOffsetMs")
        target = seek_target(start)
        if target is None or not isinstance(end, int):
            continue
        assert isinstance(start, int)
        role = str(turn.get("role"))
        x = min(start / duration, 1.0) * width
        w = max(min((end - start) / duration * width, width - x), 1.0)
        y = 0.0 if role == "user" else _ROW
        tip = f"{role}: {turn.get('content')}" + (
            f" ({latency} after the caller)" if latency else ""
        )
        parts.append(
            f'<a href="#t={target}"><rect class="turn {escape(role)}" data-t="{target}" '
            f'x="{x:.1f}" y="{y:.0f}" width="{w:.1f}" height="{_ROW:.0f}">'
            f"<title>{escape(tip)}</title></rect></a>"
        )
        if latency:
            left = x / width * 100
            labels.append(f'<span class="lat" style="left:{left:.2f}%">{escape(latency)}</span>')
    for record in tools:
        at = record.get("audioOffsetMs")
        if record.get("kind") != "tool_call" or seek_target(at) is None:
            continue
        assert isinstance(at, int)
        x = min(at / duration, 1.0) * width
        parts.append(
            f'<line class="tool" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{2 * _ROW:.0f}">'
            f"<title>tool: {escape(str(record.get('name')))}</title></line>"
        )
    svg = (
        f'<svg viewBox="0 0 {width} {2 * _ROW:.0f}" preserveAspectRatio="none" '
        f'role="img" aria-label="stereo waveform: user above, bot below">{"".join(parts)}</svg>'
    )
    rows = '<div class="rows">user<br>bot</div>'
    return f'<div class="wave">{"".join(labels)}{svg}{rows}</div>'
