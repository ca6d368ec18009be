"""The on-disk outbox: idempotent atomic writes, sent log, locks, dead letters, recovery."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipecat_roark_otel.exporter import _lock, _outbox, deadletters
from pipecat_roark_otel.exporter._dead import DeadLetters
from pipecat_roark_otel.exporter._files import write_new
from pipecat_roark_otel.exporter._items import ENDED, STARTED, chunk, segment
from pipecat_roark_otel.exporter._outbox import (
    CallGone,
    Outbox,
    call_key,
)

CALL = "call/with:odd chars"
STARTED_BODY = {
    "event": "call-started",
    "pipecatCallId": CALL,
    "eventTimestamp": "2025-01-01T00:00:00+00:00",
    "agentId": "a1",
}
END = {"segments": 1, "chunks": 2, "payload": {"event": "call-ended"}}


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "spool")


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_layout_is_private_and_never_names_the_call(outbox: Outbox) -> None:
    outbox.put_started(CALL, STARTED_BODY)
    outbox.put_chunk(CALL, 0, b"\x01\x02", sample_rate=16000, num_channels=2)
    assert stat.S_IMODE(outbox.root.stat().st_mode) == 0o700
    key = call_key(CALL)
    assert files(outbox.root) == [
        f"v1/calls/{key}/audio.json",
        f"v1/calls/{key}/call.json",
        f"v1/calls/{key}/chunk-000000.pcm",
        f"v1/calls/{key}/started.json",
    ]
    assert all(CALL not in p for p in files(outbox.root))
    assert outbox.call_id(key) == CALL
    assert outbox.load_audio_format(key) == (16000, 2)


def test_existing_root_permissions_are_tightened(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    Outbox(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_writes_are_idempotent(outbox: Outbox) -> None:
    assert outbox.put_started(CALL, STARTED_BODY)
    assert not outbox.put_started(CALL, STARTED_BODY)
    assert outbox.put_segment(CALL, 0, {"entries": []})
    assert not outbox.put_segment(CALL, 0, {"entries": []})
    assert outbox.put_chunk(CALL, 1, b"pcm")
    assert not outbox.put_chunk(CALL, 1, b"pcm")
    state = outbox.read(call_key(CALL))
    assert state is not None
    assert (state.started, state.segments, state.chunks, state.end) == (
        True,
        frozenset({0}),
        frozenset({1}),
        False,
    )
    assert not any(".tmp-" in p for p in files(outbox.root))


def test_delivered_items_are_never_rewritten(outbox: Outbox) -> None:
    key = call_key(CALL)
    outbox.put_chunk(CALL, 0, b"pcm")
    lock = outbox.try_lock(key)
    assert lock is not None
    with lock:
        outbox.mark_sent(key, chunk(0))
    assert not (outbox.calls_dir / key / "chunk-000000.pcm").exists()  # bytes dropped once sent
    assert not outbox.put_chunk(CALL, 0, b"pcm")  # a duplicate hand-over
    state = outbox.read(key)
    assert state is not None and state.chunks == frozenset() and state.done(chunk(0))


def test_completed_call_is_retired_and_late_duplicates_ignored(outbox: Outbox) -> None:
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.mark_sent(key, STARTED)
    outbox.mark_sent(key, ENDED)
    outbox.complete(key, lock)
    assert outbox.pending_keys() == []
    assert not outbox.put_started(CALL, STARTED_BODY)  # span exported twice
    assert not outbox.put_end(CALL, END)
    assert outbox.pending_keys() == []
    assert outbox.read(key) is None


def test_the_tombstone_is_the_calls_own_file_and_ages_from_completion(outbox: Outbox) -> None:
    """A completed call's call.json becomes its tombstone (a rename: no new file per call),
    and the tombstone's age, which recover() expires, counts from completion, not the call."""
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    month_ago = time.time() - 30 * 24 * 3600
    os.utime(outbox.calls_dir / key / "call.json", (month_ago, month_ago))
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.mark_sent(key, STARTED)
    outbox.complete(key, lock)
    tomb = outbox.done_dir / key
    identity, sent = tomb.read_bytes().split(b"\n", 1)
    assert (json.loads(identity), sent) == ({"callId": CALL}, b"started\n")
    assert time.time() - tomb.stat().st_mtime < 3600
    outbox.recover()
    assert tomb.exists()
    assert not outbox.put_started(CALL, STARTED_BODY)  # still a late duplicate
    assert outbox.pending_keys() == []


def test_a_call_without_call_json_still_gets_a_tombstone(outbox: Outbox) -> None:
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    (outbox.calls_dir / key / "call.json").unlink()  # lost, or a spool from a hand edit
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.complete(key, lock)
    assert (outbox.done_dir / key).read_bytes() == b""
    assert not outbox.put_started(CALL, STARTED_BODY)


def test_holds_only_sees_any_new_item_or_a_write_in_progress(outbox: Outbox) -> None:
    key = call_key(CALL)
    folder = outbox.calls_dir / key
    outbox.put_started(CALL, STARTED_BODY)
    outbox.put_chunk(CALL, 0, b"pcm", sample_rate=16000, num_channels=2)
    state = outbox.read(key)
    assert state is not None and outbox.holds_only(key, state)
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.mark_sent(key, chunk(0))
    lock.release()
    assert not outbox.holds_only(key, state)  # the snapshot still counts chunk 0
    state = state.delivered(chunk(0), time.time())
    assert outbox.holds_only(key, state)
    (folder / ".tmp-1-ab-seg-000000.json").write_bytes(b"{")  # a writer mid-write
    assert not outbox.holds_only(key, state)
    (folder / ".tmp-1-ab-seg-000000.json").unlink()
    outbox.put_segment(CALL, 0, {"entries": []})
    assert not outbox.holds_only(key, state)
    assert not outbox.holds_only(call_key("gone"), state)


def test_zombie_directory_after_completion_is_cleared_on_read(outbox: Outbox) -> None:
    key = call_key(CALL)
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.complete(key, lock)
    zombie = outbox.calls_dir / key  # as if a racing writer recreated it
    zombie.mkdir()
    (zombie / "started.json").write_text("{}")
    assert outbox.read(key) is None
    assert not zombie.exists()


def test_leftover_tmp_files_are_ignored_then_cleaned(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    tmp = outbox.calls_dir / key / ".tmp-999-abc-end.json"
    tmp.write_text("{partial")
    state = outbox.read(key)
    assert state is not None and not state.end
    assert tmp.exists()
    an_hour_later = time.time() + 3600
    monkeypatch.setattr(_outbox, "time", SimpleNamespace(time=lambda: an_hour_later))
    outbox.read(key)
    assert not tmp.exists()


def test_a_spare_just_renamed_to_a_tmp_name_is_not_taken_for_a_leftover(outbox: Outbox) -> None:
    # A spare keeps its old mtime when renamed to a tmp name, until the write lands; the
    # rename (like utime here) sets its ctime, which says it is live.
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    tmp = outbox.calls_dir / key / ".tmp-999-abc-chunk-000000.pcm"
    tmp.write_bytes(b"\x00" * 100)
    old = time.time() - 3600
    os.utime(tmp, (old, old))
    outbox.read(key)
    assert tmp.exists()


def test_lock_is_exclusive_and_released(outbox: Outbox) -> None:
    key = call_key(CALL)
    first = outbox.try_lock(key)
    assert first is not None
    assert outbox.try_lock(key) is None
    first.release()
    first.release()  # idempotent
    second = outbox.try_lock(key)
    assert second is not None
    second.release()
    assert list(outbox.locks_dir.iterdir()) == []  # no lock files pile up


def test_the_lock_is_flock_on_the_calls_folder_with_no_file_per_lock(outbox: Outbox) -> None:
    """No lock file is made or removed per session (each new file costs an inode), and a
    session never makes the folder of a call that is gone."""
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    before = files(outbox.root)
    lock = outbox.try_lock(key, create=False)
    assert lock is not None
    assert files(outbox.root) == before  # nothing new, in locks/ or anywhere
    assert outbox.try_lock(key, create=False) is None
    lock.release()
    again = outbox.try_lock(key, create=False)
    assert again is not None
    again.release()
    gone = call_key("never written")
    with pytest.raises(CallGone):
        outbox.try_lock(gone, create=False)
    assert not (outbox.calls_dir / gone).exists()


def test_a_call_retired_under_a_waiter_is_gone_then_its_zombie_is_cleared(outbox: Outbox) -> None:
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    holder = outbox.try_lock(key, create=False)
    assert holder is not None
    assert outbox.try_lock(key, create=False) is None  # the waiter: busy
    outbox.complete(key, holder)  # retired: renamed away, then removed
    with pytest.raises(CallGone):
        outbox.try_lock(key, create=False)
    assert outbox.put_started(CALL, STARTED_BODY) is False  # a late duplicate is refused...
    (outbox.calls_dir / key).mkdir()  # ...or races in after the tombstone check
    (outbox.calls_dir / key / "started.json").write_text("{}")
    zombie = outbox.try_lock(key, create=False)
    assert zombie is not None
    assert outbox.read(key) is None
    zombie.release()
    assert outbox.pending_keys() == []


def test_a_filesystem_that_cannot_flock_folders_uses_lock_files(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _lock._flock_nb

    def flock(fd: int) -> None:  # as on NFS: flock there needs a file open for writing
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd)

    monkeypatch.setattr(_lock, "_flock_nb", flock)
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    lock = outbox.try_lock(key)
    assert lock is not None
    assert [p.name for p in outbox.locks_dir.iterdir()] == [f"{key}.lock"]
    assert outbox.try_lock(key) is None
    lock.release()
    assert list(outbox.locks_dir.iterdir()) == []
    again = outbox.try_lock(key)
    assert again is not None
    again.release()


def test_excl_lock_fallback_and_staleness(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "spool", lock_mode="excl", stale_lock_after=60.0)
    key = call_key(CALL)
    lock = outbox.try_lock(key)
    assert lock is not None
    assert outbox.try_lock(key) is None
    old = time.time() - 120
    os.utime(outbox.locks_dir / f"{key}.lock", (old, old))  # its holder died long ago
    assert outbox.try_lock(key) is None  # this try clears it...
    again = outbox.try_lock(key)  # ...the next one takes it
    assert again is not None
    again.release()


def test_lock_excludes_another_process(outbox: Outbox) -> None:
    key = call_key(CALL)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pipecat_roark_otel.exporter._outbox import Outbox\n"
        "lock = Outbox(Path(sys.argv[1])).try_lock(sys.argv[2])\n"
        "print('locked' if lock else 'busy', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(outbox.root), key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "locked"
        assert outbox.try_lock(key) is None
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(10)
        child.stdout.close()
    lock = outbox.try_lock(key)  # the dead process's lock went with it
    assert lock is not None
    lock.release()


def _dead_letter_end(outbox: Outbox) -> str:
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    outbox.put_segment(CALL, 0, {"entries": []})
    outbox.put_end(CALL, END)
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.mark_sent(key, STARTED)
    outbox.dead_letter(key, [ENDED, segment(0)], status=422, message="x" * 2000, now=1700000000.0)
    state = outbox.read(key)
    assert state is not None and state.done(ENDED) and ENDED in state.dead
    outbox.complete(key, lock)
    return key


def test_dead_letter_keeps_items_and_reason(outbox: Outbox) -> None:
    key = _dead_letter_end(outbox)
    assert outbox.pending_keys() == []
    info = DeadLetters(outbox).info(key)
    assert info is not None
    assert info["callId"] == CALL
    assert info["items"] == ["ended", "segment 0"]
    reason = info["reasons"]["ended"]
    assert reason["status"] == 422 and len(reason["message"]) == 500
    assert reason["time"] == 1700000000.0


def test_resend_moves_items_back_and_remembers_what_arrived(outbox: Outbox) -> None:
    key = _dead_letter_end(outbox)
    assert DeadLetters(outbox).resend(key) == 2
    assert outbox.dead_keys() == []
    state = outbox.read(key)
    assert state is not None
    assert state.end and state.segments == frozenset({0})
    assert state.done(STARTED) and not state.done(ENDED)  # started is not sent again
    assert not outbox.put_started(CALL, STARTED_BODY)  # and the tombstone is gone


def test_resend_on_a_call_still_going_forgets_that_its_items_died(outbox: Outbox) -> None:
    """The dead line is in the live call's own log (call.json): a resend takes it back."""
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    outbox.put_segment(CALL, 0, {"entries": []})
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.mark_sent(key, STARTED)
    outbox.dead_letter(key, [segment(0)], status=422, message="no", now=1700000000.0)
    lock.release()
    state = outbox.read(key)
    assert state is not None and segment(0) in state.dead
    assert DeadLetters(outbox).resend(key) == 1
    state = outbox.read(key)
    assert state is not None and state.segments == frozenset({0})
    assert not state.done(segment(0)) and state.done(STARTED)


def test_the_sent_log_is_kept_in_call_json_with_no_file_of_its_own(outbox: Outbox) -> None:
    key = call_key(CALL)
    folder = outbox.calls_dir / key
    outbox.put_started(CALL, STARTED_BODY)
    outbox.put_chunk(CALL, 0, b"pcm")
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.mark_sent(key, STARTED)
    outbox.mark_sent(key, chunk(0))
    lock.release()
    assert sorted(p.name for p in folder.iterdir()) == ["call.json", "started.json"]
    identity, sent = (folder / "call.json").read_bytes().split(b"\n", 1)
    assert (json.loads(identity), sent) == ({"callId": CALL}, b"started\nchunk 0\n")
    state = outbox.read(key)
    assert state is not None and state.call_id == CALL
    assert state.done(STARTED) and state.done(chunk(0)) and state.log.damaged == 0
    assert not outbox.put_started(CALL, STARTED_BODY)
    assert not outbox.put_chunk(CALL, 0, b"pcm")


def test_a_call_json_from_before_keeps_its_log_in_sent_log(outbox: Outbox) -> None:
    """A spool of the previous version: call.json is the identity alone, with no newline;
    nothing is appended to it, the sent log goes on in sent.log."""
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    folder = outbox.calls_dir / key
    old = json.dumps({"callId": CALL}).encode()
    (folder / "call.json").write_bytes(old)
    (folder / "sent.log").write_bytes(b"chunk 7\n")
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.mark_sent(key, STARTED)
    lock.release()
    assert (folder / "call.json").read_bytes() == old
    assert (folder / "sent.log").read_bytes() == b"chunk 7\nstarted\n"
    state = outbox.read(key)
    assert state is not None and state.call_id == CALL
    assert state.done(STARTED) and state.done(chunk(7))


def test_a_damaged_line_in_call_json_is_repaired_there(outbox: Outbox) -> None:
    key = call_key(CALL)
    folder = outbox.calls_dir / key
    outbox.put_started(CALL, STARTED_BODY)
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.mark_sent(key, STARTED)
    with open(folder / "call.json", "ab") as f:
        f.write(b"\xff garbage\n")
    (folder / "sent.log").write_bytes(b"chunk 2\n")  # and a sent.log beside it
    state = outbox.read(key)
    assert state is not None and state.log.damaged == 1
    outbox.repair_log(key, state.log)
    lock.release()
    assert not (folder / "sent.log").exists()
    repaired = outbox.read(key)
    assert repaired is not None and repaired.log.damaged == 0 and repaired.call_id == CALL
    assert repaired.done(STARTED) and repaired.done(chunk(2))


def test_call_json_is_never_replaced_once_there(outbox: Outbox) -> None:
    key = call_key(CALL)
    outbox.put_started(CALL, STARTED_BODY)
    call_json = outbox.calls_dir / key / "call.json"
    before = call_json.stat().st_ino
    write_new(call_json, b"another writer's\n")
    assert call_json.stat().st_ino == before
    assert json.loads(call_json.read_bytes()) == {"callId": CALL}
    assert not any(".tmp-" in p for p in files(outbox.root))


def test_resend_refuses_while_call_is_locked(outbox: Outbox) -> None:
    key = _dead_letter_end(outbox)
    holder = outbox.try_lock(key)
    assert holder is not None
    with pytest.raises(BlockingIOError):
        DeadLetters(outbox).resend(key)
    holder.release()


def test_cli_list_show_resend_purge(outbox: Outbox, capsys: pytest.CaptureFixture[str]) -> None:
    key = _dead_letter_end(outbox)
    spool = ["--spool-dir", str(outbox.root)]
    assert deadletters.main([*spool, "list"]) == 0
    line = capsys.readouterr().out
    assert key in line and "status=422" in line and "items=2" in line
    assert deadletters.main([*spool, "show", CALL]) == 0  # raw call id works too
    assert json.loads(capsys.readouterr().out)["items"] == ["ended", "segment 0"]
    assert deadletters.main([*spool, "resend", key]) == 0
    assert "moved 2" in capsys.readouterr().out
    assert deadletters.main([*spool, "resend", key]) == 1
    assert deadletters.main([*spool, "purge", key]) == 1
    capsys.readouterr()
    lock = outbox.try_lock(key)
    assert lock is not None
    outbox.dead_letter(key, [ENDED], status=400, message="bad", now=0.0)
    lock.release()
    assert deadletters.main([*spool, "purge", key]) == 0
    assert outbox.dead_keys() == []


def spool(outbox: Outbox) -> list[str]:
    return ["--spool-dir", str(outbox.root)]


def test_cli_runs_as_a_module(outbox: Outbox) -> None:
    _dead_letter_end(outbox)
    out = subprocess.run(
        [sys.executable, "-m", "pipecat_roark_otel.exporter.deadletters", *spool(outbox), "list"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert call_key(CALL) in out.stdout


def test_recover_clears_trash_and_old_tombstones(outbox: Outbox) -> None:
    (outbox.trash_dir / "x").mkdir(parents=True)
    old_tomb = outbox.done_dir / "old"
    old_tomb.write_bytes(b"")
    then = time.time() - 30 * 24 * 3600
    os.utime(old_tomb, (then, then))
    (outbox.done_dir / "new").write_bytes(b"")
    outbox.recover()
    assert not outbox.trash_dir.exists()
    assert sorted(p.name for p in outbox.done_dir.iterdir()) == ["new"]


def test_concurrent_writers_leave_one_item(outbox: Outbox) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipecat_roark_otel.exporter._outbox import Outbox\n"
        "o = Outbox(Path(sys.argv[1]))\n"
        "for i in range(50):\n"
        "    o.put_chunk('c', i, bytes([i]) * 1000)\n"
        "    o.put_segment('c', i, {'entries': [], 'i': i})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(outbox.root)]) for _ in range(3)]
    for p in procs:
        assert p.wait(30) == 0
    key = call_key("c")
    state = outbox.read(key)
    assert state is not None
    assert state.chunks == frozenset(range(50)) and state.segments == frozenset(range(50))
    assert all(outbox.load_chunk(key, i) == bytes([i]) * 1000 for i in range(50))
    assert not any(".tmp-" in p for p in files(outbox.root))
