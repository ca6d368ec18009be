"""examples/bot.py imports and builds its real pipeline with fake keys."""

from __future__ import annotations

from typing import Any

import pytest

for extra in ("deepgram", "openai", "onnxruntime"):
    pytest.importorskip(extra, reason="install the bot extra: pip install -e '.[bot]'")

from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor  # noqa: E402
from pipecat.processors.frame_processor import FrameProcessor  # noqa: E402
from pipecat.transports.base_input import BaseInputTransport  # noqa: E402
from pipecat.transports.base_transport import BaseTransport, TransportParams  # noqa: E402

from pipecat_roark_otel.devserver import LocalRoark  # noqa: E402
from pipecat_roark_otel.simulation import SimulatedOutputTransport  # noqa: E402

from .realbot.harness import load_bot  # noqa: E402


class _Transport(BaseTransport):
    def __init__(self) -> None:
        super().__init__()
        self._input = BaseInputTransport(TransportParams())
        self._output = SimulatedOutputTransport(speed=1.0)
        self._register_event_handler("on_client_connected")
        self._register_event_handler("on_client_disconnected")

    def input(self) -> FrameProcessor:
        return self._input

    def output(self) -> FrameProcessor:
        return self._output


def test_bot_builds_its_pipeline(monkeypatch: pytest.MonkeyPatch, roark: LocalRoark) -> None:
    for name in ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "CARTESIA_API_KEY"):
        monkeypatch.setenv(name, "fake-key")
    monkeypatch.setenv("ROARK_API_KEY", roark.api_key)
    monkeypatch.setenv("ROARK_BASE_URL", roark.base_url)
    bot = load_bot()
    transport = _Transport()
    runner_args: Any = {"session_id": "cloud-session-7"}
    task, observer = bot.build_task(transport, runner_args)

    assert observer.conversation_id == "cloud-session-7"
    flat = _flatten(task.pipeline)
    # Nothing of ours in the pipeline: the observer records from the frames it sees.
    assert not any(isinstance(p, AudioBufferProcessor) for p in flat)
    names = [type(p).__name__ for p in flat]
    i = names.index("BaseInputTransport")
    assert names[i + 1 : i + 3] == ["DeepgramSTTService", "LLMUserAggregator"]
    assert transport.output() in flat


def _flatten(processor: Any) -> list[Any]:
    children = getattr(processor, "processors", None)
    if not children:
        return [processor]
    return [leaf for child in children for leaf in _flatten(child)]
