"""The shared bench call: scripted frames through a real PipelineTask, and the observers compared.

A call is a 20 ms tick of 16 kHz mono input audio, bot output audio while it speaks,
and a turn every ``turn_every_s`` (3 finals, 36 LLM tokens, 36 TTS words, a tool call
every 4th turn). Frames go through 5 pass-through processors, pushed as fast as the
loop takes them (a small in-flight window keeps queues short), or paced in real time.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

IN_RATE = 16_000
OUT_RATE = 24_000
TICK_S = 0.02
PASS_THROUGH = 5
WINDOW = 16  # frames in flight between the source and the sink
# Nothing listens here: the incumbent's POSTs and our delivery attempts fail at once.
UNREACHABLE_URL = "http://127.0.0.1:9"
# Where both sides deliver; bench.memory points it at bench/_receiver.py.
DELIVERY_URL = UNREACHABLE_URL
BENCH_KEY = "rk_bench"

# ours: the documented setup (the observer records); ours_spliced: roark.audio_processor
# spliced after the pass-throughs, the incumbent's setup.
VARIANTS_PLAIN = ("none", "noop", "noop_first", "incumbent", "ours", "ours_spliced")
VARIANTS_TRACING = ("tracing", "noop+tracing", "incumbent+tracing", "ours+tracing")
# Diagnostics: the spliced recorder alone, with a no-op observer, our observer recording
# nothing, and the spliced setup on Pipecat's own buffers (a track handler attached).
VARIANTS_PARTS = ("recorder", "noop_rec", "ours_norec", "ours_spliced_pipecat")


@dataclass(frozen=True)
class CallShape:
    seconds: float = 180.0
    turn_every_s: float = 10.0
    user_speech_s: float = 2.0
    bot_speech_s: float = 5.0
    finals: int = 3
    tokens: int = 36
    words: int = 36
    tool_every: int = 4
    audio: bool = True

    def ticks(self) -> int:
        return round(self.seconds / TICK_S)


_IN_PCM = bytes(int(IN_RATE * TICK_S) * 2)
_OUT_PCM = bytes(int(OUT_RATE * TICK_S) * 2)


def _turn_frames(turn: int, shape: CallShape) -> Iterator[Frame]:
    now = "2026-01-01T00:00:00+00:00"
    for i in range(shape.finals):
        yield TranscriptionFrame(f"user part {i} of turn {turn}", "caller-1", now)
    if shape.tool_every and turn % shape.tool_every == shape.tool_every - 1:
        kw = {"function_name": "lookup_order", "tool_call_id": f"call_{turn}"}
        args = {"order_id": f"A-{turn}"}
        yield FunctionCallInProgressFrame(**kw, arguments=args)
        yield FunctionCallResultFrame(**kw, arguments=args, result={"status": "shipped"})
    yield LLMFullResponseStartFrame()
    for i in range(shape.tokens):
        yield LLMTextFrame(f" tok{i}")
    yield LLMFullResponseEndFrame()


def script(shape: CallShape) -> Iterator[tuple[int, Frame]]:
    """(tick, frame) in push order; frames are built lazily, so every variant pays alike."""
    turn_ticks = round(shape.turn_every_s / TICK_S)
    user_ticks = round(shape.user_speech_s / TICK_S)
    bot_ticks = round(shape.bot_speech_s / TICK_S)
    word_every = max(1, bot_ticks // max(1, shape.words))
    turn = -1
    bot_left = 0
    words_left = 0
    for tick in range(shape.ticks()):
        phase = tick % turn_ticks
        if phase == 0:
            turn += 1
            yield tick, UserStartedSpeakingFrame()
        if shape.audio:
            yield tick, InputAudioRawFrame(_IN_PCM, IN_RATE, 1)
        if phase == user_ticks:
            yield tick, UserStoppedSpeakingFrame()
            for frame in _turn_frames(turn, shape):
                yield tick, frame
            yield tick, BotStartedSpeakingFrame()
            yield tick, TTSStartedFrame()
            bot_left, words_left = bot_ticks, shape.words
        if bot_left:
            spoken = bot_ticks - bot_left
            if words_left and spoken % word_every == 0:
                yield tick, TTSTextFrame(f"word{words_left}", "word")
                words_left -= 1
            if shape.audio:
                yield tick, TTSAudioRawFrame(_OUT_PCM, OUT_RATE, 1)
            bot_left -= 1
            if not bot_left:
                while words_left:
                    yield tick, TTSTextFrame(f"word{words_left}", "word")
                    words_left -= 1
                yield tick, TTSStoppedFrame()
                yield tick, BotStoppedSpeakingFrame()


def frame_count(shape: CallShape) -> int:
    return sum(1 for _ in script(shape))


class PassThrough(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Sink(FrameProcessor):
    """Counts scripted frames that made it through; wakes the source's window."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.progress = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM:
            self.count += 1
            self.progress.set()
        await self.push_frame(frame, direction)


class Source(FrameProcessor):
    """Pushes the script once the StartFrame has passed; ``speed`` 0 means flat out."""

    def __init__(self, shape: CallShape, sink: Sink, *, speed: float = 0.0) -> None:
        super().__init__()
        self.shape = shape
        self.sink = sink
        self.speed = speed
        self.started = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self.started.set()

    async def run_script(self, on_sample: Callable[[], None] | None = None) -> int:
        sink = self.sink
        base = sink.count
        pushed = 0
        last_tick = 0
        t0 = time.monotonic()
        for tick, frame in script(self.shape):
            if self.speed and tick != last_tick:
                last_tick = tick
                delay = t0 + tick * TICK_S / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            while pushed - (sink.count - base) >= WINDOW:
                sink.progress.clear()
                await sink.progress.wait()
            await self.push_frame(frame)
            pushed += 1
            if on_sample is not None and pushed % 64 == 0:
                on_sample()
        while sink.count - base < pushed:
            sink.progress.clear()
            await sink.progress.wait()
        return pushed


# -- the global provider: one per process, processors swapped per run -------------------


class _Router(SpanProcessor):
    def __init__(self) -> None:
        self.targets: list[SpanProcessor] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for target in self.targets:
            target.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for target in self.targets:
            target.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(t.force_flush(timeout_millis) for t in self.targets)

    @property
    def _span_processors(self) -> tuple[SpanProcessor, ...]:
        # Read like the SDK's multi-processor, so the observer finds its exporter behind us.
        return tuple(self.targets)


class NullExporter(SpanExporter):
    """Stands in for the user's OTLP backend in the tracing runs."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _new_spool() -> Path:
    path = Path(tempfile.mkdtemp(prefix="roark-bench-"))
    atexit.register(_remove_spool, path)
    return path


def _remove_spool(path: Path) -> None:
    # Runs against a dead URL leave every call in the spool: gone with the process. The
    # exporter stops first, so its threads write nothing there afterwards.
    if _OTEL is not None and _OTEL.roark is not None:
        _OTEL.roark.shutdown()
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Otel:
    router: _Router
    backend: BatchSpanProcessor  # Pipecat's spans (tracing runs)
    roark: BatchSpanProcessor | None = None  # RoarkSpanExporter (our runs)
    exporter: Any = None
    spool: Path = field(default_factory=_new_spool)


_OTEL: Otel | None = None


def otel(base_url: str | None = None, api_key: str = BENCH_KEY) -> Otel:
    """The process's SDK provider (Pipecat traces through the global one, set once)."""
    global _OTEL
    if _OTEL is None:
        router = _Router()
        provider = TracerProvider()
        provider.add_span_processor(router)
        trace.set_tracer_provider(provider)
        _OTEL = Otel(router, BatchSpanProcessor(NullExporter()))
    if _OTEL.roark is None:
        from pipecat_roark_otel.exporter import RoarkSpanExporter

        _OTEL.exporter = RoarkSpanExporter(
            api_key=api_key, base_url=base_url or DELIVERY_URL, spool_dir=_OTEL.spool / "spool"
        )
        _OTEL.roark = BatchSpanProcessor(_OTEL.exporter)
    return _OTEL


def has_incumbent() -> bool:
    try:
        import pipecat_roark  # noqa: F401
    except ImportError:
        return False
    return True


async def _ignore(*_args: Any) -> None:
    return None


def make_observer(variant: str) -> tuple[BaseObserver | None, FrameProcessor | None]:
    """(observer, recorder to splice after the pass-throughs) for a variant name."""
    kind = variant.removesuffix("+tracing").removesuffix("_steps")
    if kind in ("none", "tracing"):
        return None, None
    if kind == "noop":
        return BaseObserver(), None
    if kind == "noop_first":
        return BaseObserver(observe_every_push=False), None
    if kind == "incumbent":
        from pipecat_roark import RoarkObserver as Incumbent

        inc = Incumbent(api_key=BENCH_KEY, agent_id="bench-agent", runner_args=None)
        # It posts to api.roark.ai hard-coded; send it where a connect fails at once.
        client = inc._client
        client._webhook_url = f"{DELIVERY_URL}/v1/integrations/pipecat"
        client._chunk_upload_url_endpoint = (
            f"{DELIVERY_URL}/v1/integrations/pipecat/chunk-upload-url"
        )
        return inc, inc.audio_processor
    if kind in ("recorder", "noop_rec"):
        from pipecat_roark_otel.audio import RoarkAudioRecorder

        return (BaseObserver() if kind == "noop_rec" else None), RoarkAudioRecorder()
    if kind in ("ours", "ours_spliced", "ours_norec", "ours_spliced_pipecat"):
        from pipecat_roark_otel import RoarkObserver

        ours = RoarkObserver(
            agent_id="bench-agent",
            conversation_id=f"bench-{uuid.uuid4()}",
            record_audio=kind != "ours_norec",
            exporter=otel().exporter,
        )
        if kind == "ours_spliced_pipecat":
            ours.audio_processor.add_event_handler("on_track_audio_data", _ignore)
        return ours, (ours.audio_processor if kind.startswith("ours_spliced") else None)
    raise ValueError(f"unknown variant {variant!r}")


def configure_otel(variant: str) -> None:
    o = otel()
    targets: list[SpanProcessor] = []
    if variant.endswith("+tracing") or variant == "tracing":
        targets.append(o.backend)
    if variant.startswith("ours"):
        assert o.roark is not None
        targets.append(o.roark)
    o.router.targets = targets


def observer_queues(task: PipelineTask) -> dict[BaseObserver, asyncio.Queue[Any]]:
    """The per-observer queues of Pipecat's WorkerObserver (bench only: private)."""
    proxies = getattr(getattr(task, "_observer", None), "_proxies", None) or {}
    return {obs: proxy.queue for obs, proxy in proxies.items()}


@dataclass
class CallResult:
    variant: str
    frames: int
    cpu_s: float  # scripted frames, until every observer queue drained
    wall_s: float
    end_cpu_s: float  # EndFrame to the exporters flushed
    max_queue: int  # deepest the observer-under-test's queue got
    delivery_cpu_s: float = 0.0  # of cpu_s, our delivery threads'
    loop_cpu_s: float = 0.0  # of cpu_s, the event loop's thread (time.thread_time)
    delivery_call_cpu_s: float = 0.0  # our delivery threads', until the call was delivered


async def run_call(
    variant: str,
    shape: CallShape,
    *,
    speed: float = 0.0,
    on_ready: Callable[[PipelineTask], None] | None = None,
    clock: Callable[[], float] = time.process_time,
    collect: bool = True,
    sinks: list[Sink] | None = None,
    make: Callable[[], tuple[Any, Any]] | None = None,
) -> CallResult:
    """One call through a real PipelineTask; CPU is measured on ``clock`` (process-wide)."""
    configure_otel(variant)
    observer, recorder = make() if make is not None else make_observer(variant)
    sink = Sink()
    if sinks is not None:
        sinks.append(sink)
    source = Source(shape, sink, speed=speed)
    procs: list[FrameProcessor] = [source, *(PassThrough() for _ in range(PASS_THROUGH))]
    if recorder is not None:
        procs.append(recorder)
    procs.append(sink)
    task = PipelineTask(
        Pipeline(procs),
        params=PipelineParams(audio_in_sample_rate=IN_RATE, audio_out_sample_rate=OUT_RATE),
        observers=[observer] if observer is not None else [],
        enable_tracing="tracing" in variant,
        idle_timeout_secs=None,
    )
    if on_ready is not None:
        on_ready(task)
    result = CallResult(variant, 0, 0.0, 0.0, 0.0, 0)

    async def drive() -> None:
        await source.started.wait()
        await asyncio.sleep(0.05)  # let on_pipeline_started and setup settle
        queues = observer_queues(task)
        watched = queues.get(observer) if observer is not None else None

        def sample() -> None:
            if watched is not None:
                result.max_queue = max(result.max_queue, watched.qsize())

        if collect:
            gc.collect()
        w0, c0, d0, l0 = time.perf_counter(), clock(), delivery_cpu(), time.thread_time()
        result.frames = await source.run_script(sample)
        for queue in queues.values():
            await queue.join()
        result.cpu_s = clock() - c0
        result.loop_cpu_s = time.thread_time() - l0
        result.delivery_cpu_s = delivery_cpu() - d0
        result.wall_s = time.perf_counter() - w0
        ended[0] = clock()
        await task.queue_frame(EndFrame())

    ended = [0.0]
    driver = asyncio.ensure_future(drive())
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(task)
    await runner.run()
    await driver
    for target in otel().router.targets:
        await asyncio.to_thread(target.force_flush, 10_000)
    result.end_cpu_s = clock() - ended[0]
    return result


def delivery_cpu() -> float:
    """CPU seconds of our delivery threads so far (Linux: each thread's CPU clock)."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("roark-delivery") and thread.ident is not None:
            with contextlib.suppress(OSError, ProcessLookupError):
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def quiet_logs() -> None:
    """Pipecat logs every task start/stop at DEBUG; keep the bench's output to its tables."""
    import logging
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    logging.getLogger("pipecat_roark").setLevel(logging.CRITICAL)
    logging.getLogger("pipecat_roark_otel").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def machine() -> dict[str, Any]:
    import platform
    from importlib.metadata import version

    def v(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "-"

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "pipecat-ai": v("pipecat-ai"),
        "pipecat-roark": v("pipecat-roark"),
        "pipecat-roark-otel": v("pipecat-roark-otel"),
        "opentelemetry-sdk": v("opentelemetry-sdk"),
    }


def results_path(name: str) -> Path:
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    return out / f"{name}.json"


def write_results(bench: str, out: str, started: float, **fields: Any) -> dict[str, Any]:
    """Say how long the run took (since ``started``, monotonic) and write its JSON."""
    elapsed = time.monotonic() - started
    print(f"({elapsed:.0f} s)")
    doc = {"bench": bench, "machine": machine(), **fields, "elapsed_s": elapsed}
    path = results_path(out)
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")
    return doc


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        return f"{c:.2f}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)
