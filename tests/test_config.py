"""Configuration fails once, at construction, naming the setting and its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipecat_roark_otel import RoarkObserver
from pipecat_roark_otel.config import DEFAULT_BASE_URL, resolve_settings
from pipecat_roark_otel.exporter import RoarkSpanExporter


def test_missing_key_names_the_variable() -> None:
    with pytest.raises(ValueError, match="ROARK_API_KEY"):
        RoarkSpanExporter()
    with pytest.raises(ValueError, match="ROARK_API_KEY"):
        RoarkObserver(agent_id="a")


@pytest.mark.parametrize("url", ["api.roark.ai", "ftp://x", "http://", "http://h/?q=1", ""])
def test_malformed_base_url(url: str) -> None:
    with pytest.raises(ValueError, match="ROARK_BASE_URL"):
        RoarkSpanExporter(api_key="rk_test_x", base_url=url or "   ")


@pytest.mark.parametrize("agent_id", ["", "   ", None])
def test_empty_agent_id(agent_id: object) -> None:
    with pytest.raises(ValueError, match="agent_id"):
        RoarkObserver(agent_id=agent_id, api_key="rk_test_x")  # type: ignore[arg-type]


def test_two_different_ids_are_a_mistake() -> None:
    with pytest.raises(ValueError, match="conversation_id"):
        RoarkObserver(agent_id="a", api_key="k", conversation_id="x", pipecat_call_id="y")


def test_argument_beats_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROARK_API_KEY", "rk_env")
    monkeypatch.setenv("ROARK_BASE_URL", "http://env.example:1/")
    monkeypatch.setenv("ROARK_SPOOL_DIR", str(tmp_path / "env-spool"))
    env = resolve_settings()
    assert (env.api_key, env.base_url, env.spool_dir) == (
        "rk_env",
        "http://env.example:1",
        tmp_path / "env-spool",
    )
    arg = resolve_settings(api_key="rk_arg", base_url="https://arg.example", spool_dir=tmp_path)
    assert (arg.api_key, arg.base_url, arg.spool_dir) == ("rk_arg", "https://arg.example", tmp_path)


def test_defaults_and_repr_hide_the_key(tmp_path: Path) -> None:
    settings = resolve_settings(api_key="rk_live_secret")
    assert settings.base_url == DEFAULT_BASE_URL
    # One spool per destination, under the user's cache dir (XDG_CACHE_HOME in tests).
    assert settings.spool_dir.parent == tmp_path / "xdg-cache" / "pipecat-roark-otel" / "spool"
    assert "rk_live_secret" not in repr(settings)


def test_two_workspaces_on_one_roark_never_share_a_spool(tmp_path: Path) -> None:
    """A platform with one key per customer: the outbox delivers with one key, so one each."""
    a = RoarkSpanExporter(api_key="rk_test_customer_a")
    b = RoarkSpanExporter(api_key="rk_test_customer_b")
    try:
        assert a.settings.base_url == b.settings.base_url
        assert a.settings.spool_dir != b.settings.spool_dir
        assert a.settings.spool_dir.name not in "rk_test_customer_a"  # a hash, not the key
        with pytest.raises(ValueError, match="already used by another Roark destination"):
            RoarkSpanExporter(api_key="rk_test_customer_c", spool_dir=a.settings.spool_dir)
        # The same destination again shares the one outbox, as before.
        RoarkSpanExporter(api_key="rk_test_customer_a", spool_dir=a.settings.spool_dir).shutdown()
    finally:
        a.shutdown()
        b.shutdown()
    # Once the first is gone, its spool may serve another key (a rotated one).
    RoarkSpanExporter(api_key="rk_test_customer_c", spool_dir=a.settings.spool_dir).shutdown()


def test_observer_follows_an_exporter_handed_to_it_or_on_its_provider(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = RoarkSpanExporter(
        api_key="rk_test_x", base_url="http://127.0.0.1:9", spool_dir=tmp_path
    )
    try:
        # No key of its own: the exporter delivers.
        assert RoarkObserver(agent_id="a", exporter=exporter).conversation_id
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        assert RoarkObserver(agent_id="a", tracer_provider=provider).conversation_id
        # An exporter that exists somewhere in the process is not this observer's.
        with pytest.raises(ValueError, match="ROARK_API_KEY"):
            RoarkObserver(agent_id="a", tracer_provider=TracerProvider())
        with pytest.raises(ValueError, match="exporter"):
            RoarkObserver(agent_id="a", exporter=exporter, api_key="rk_other")
    finally:
        exporter.shutdown()


def test_pipecat_call_id_is_an_alias() -> None:
    observer = RoarkObserver(agent_id="a", api_key="k", pipecat_call_id="call-9")
    assert observer.conversation_id == observer.pipecat_call_id == "call-9"


def test_runner_args_give_the_id() -> None:
    class Conn:
        pc_id = "pc-123"

    class Args:
        webrtc_connection = Conn()
        session_id = "sess-1"

    assert RoarkObserver(agent_id="a", api_key="k", runner_args=Args()).conversation_id == "pc-123"
    cloud = {"session_id": "sess-2"}
    assert RoarkObserver(agent_id="a", api_key="k", runner_args=cloud).conversation_id == "sess-2"
