from __future__ import annotations

import pipecat_roark_otel
import pipecat_roark_otel.audio
import pipecat_roark_otel.exporter


def test_public_names_are_pinned() -> None:
    assert pipecat_roark_otel.__all__ == ["RoarkAudioRecorder", "RoarkObserver", "__version__"]
    assert pipecat_roark_otel.exporter.__all__ == [
        "ContentFilteringSpanExporter",
        "RoarkSpanExporter",
    ]
    assert pipecat_roark_otel.audio.__all__ == [
        "DEFAULT_CHUNK_BYTES",
        "OTLPRecordingTarget",
        "ObservedRecorder",
        "RoarkAudioRecorder",
    ]
    for module in (pipecat_roark_otel, pipecat_roark_otel.exporter, pipecat_roark_otel.audio):
        for name in module.__all__:
            assert hasattr(module, name)
