"""Wire models: exactly the JSON of docs/CONTRACT.md (optional fields omitted, not null)."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic_core import to_json

from ._items import MAX_INDEX

_NULLABLE_REQUIRED = ("callStartedAt", "callEndedAt")
# Bounds on what a span (or a bridge peer) may claim; beyond them the record is rejected.
MAX_SAMPLE_RATE: Final = 384_000
MAX_CHANNELS: Final = 32


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The JSON object sent to Roark, in contract field order."""
        return self.model_dump(exclude_none=True)

    def wire_json(self) -> bytes:
        """``wire()`` as the JSON sent, encoded by pydantic's core with no dict in between."""
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)


class CallStarted(_Wire):
    event: Literal["call-started"] = "call-started"
    pipecatCallId: StrictStr = Field(min_length=1)
    eventTimestamp: StrictStr
    agentId: StrictStr = Field(min_length=1)
    agentName: StrictStr | None = None
    agentPrompt: StrictStr | None = None


class TranscriptTurn(_Wire):
    role: Literal["user", "assistant", "system"]
    content: StrictStr
    timestamp: StrictStr
    endTimestamp: StrictStr
    audioOffsetMs: StrictInt | None = Field(default=None, ge=0)
    endAudioOffsetMs: StrictInt | None = Field(default=None, ge=0)
    userId: StrictStr | None = None
    language: StrictStr | None = None


class ToolCallRecord(_Wire):
    kind: Literal["tool_call"] = "tool_call"
    toolCallId: StrictStr
    name: StrictStr
    arguments: StrictStr
    timestamp: StrictStr
    audioOffsetMs: StrictInt | None = Field(default=None, ge=0)


class ToolResultRecord(_Wire):
    kind: Literal["tool_result"] = "tool_result"
    toolCallId: StrictStr
    content: StrictStr
    timestamp: StrictStr
    audioOffsetMs: StrictInt | None = Field(default=None, ge=0)


class CallEnded(_Wire):
    event: Literal["call-ended"] = "call-ended"
    pipecatCallId: StrictStr = Field(min_length=1)
    eventTimestamp: StrictStr
    callStartedAt: StrictStr | None
    callEndedAt: StrictStr | None
    callEndedReason: StrictStr
    agentSpokeFirst: StrictBool | None = None
    recordingSampleRate: StrictInt | None = Field(default=None, gt=0, le=MAX_SAMPLE_RATE)
    recordingNumChannels: StrictInt | None = Field(default=None, gt=0, le=MAX_CHANNELS)
    transcript: list[TranscriptTurn] | None = None
    toolCalls: list[ToolCallRecord | ToolResultRecord] | None = None

    def wire(self) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True)
        for name in _NULLABLE_REQUIRED:
            body.setdefault(name, None)
        # Keep contract order: the nullable pair stands after eventTimestamp.
        ordered = {k: body[k] for k in type(self).model_fields if k in body}
        return ordered

    def wire_json(self) -> bytes:
        if self.callStartedAt is None or self.callEndedAt is None:
            return to_json(self.wire())  # the nullable pair goes out as null, not left out
        return super().wire_json()


class ChunkUploadRequest(_Wire):
    pipecatCallId: StrictStr = Field(min_length=1)
    chunkIndex: StrictInt = Field(ge=0)
    contentType: Literal["audio/pcm"] = "audio/pcm"


class PresignReply(BaseModel):
    """Only ``uploadUrl`` is required; the reply may be wrapped as ``{"data": {...}}``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    uploadUrl: StrictStr = Field(min_length=1)
    s3Key: str | None = None
    chunkIndex: int | None = None
    expiresInSeconds: int | None = None
    method: str | None = None
    contentType: str | None = None

    @classmethod
    def parse_reply(cls, body: Any) -> PresignReply:
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            body = body["data"]
        return cls.model_validate(body)


class EndRecord(BaseModel):
    """The end record in the outbox: call-ended's payload plus what to wait for.

    Counts are bounded before anything iterates over them (issue: 2**62 segments).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    segments: StrictInt = Field(ge=0, le=MAX_INDEX + 1)
    chunks: StrictInt = Field(ge=0, le=MAX_INDEX + 1)
    started: StrictBool = True  # False: the call ended before call-started was ever written
    payload: dict[str, Any]
