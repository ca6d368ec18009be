"""Per-call locks across processes and hosts: a process forked while one is held
(multiprocessing's "fork", a pre-forking server) inherits the lock's descriptor and must
not keep the call locked after the parent lets go; a spool on a network filesystem locks
with lock files, since a folder's flock there excludes only this host."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipecat_roark_otel.exporter import _lock
from pipecat_roark_otel.exporter._lock import CallLock, LockMode
from pipecat_roark_otel.exporter._outbox import Outbox, call_key

from .support import wait_until

_HOLDER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from pipecat_roark_otel.exporter._outbox import Outbox, call_key

    outbox = Outbox(Path(sys.argv[1]), lock_mode=sys.argv[2])
    outbox.put_started("c1", {"pipecatCallId": "c1"})
    lock = outbox.try_lock(call_key("c1"))
    assert lock is not None
    r, w = os.pipe()
    pid = os.fork()  # a delivery session in progress when the app forks a worker
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # the worker lives on; it never touches the spool
        os._exit(0)
    os.close(r)
    lock.release()  # the session ends in the parent
    print("released", flush=True)
    sys.stdin.readline()
    os.write(w, b"x")
    os.waitpid(pid, 0)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("mode", ["auto", "excl"])
def test_a_child_forked_during_a_session_does_not_keep_the_call_locked(
    tmp_path: Path, mode: LockMode
) -> None:
    spool = tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(spool), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "released"
        # Another process's deliverer (it tries a busy call again every 0.5 s): the call is
        # free while the forked worker lives on.
        other = Outbox(spool, lock_mode=mode)
        held: list[CallLock] = []

        def locked() -> bool:
            lock = other.try_lock(call_key("c1"), create=False)
            if lock is not None:
                held.append(lock)
            return lock is not None

        wait_until(locked, timeout=10.0, what="the call free of the forked child's copy")
        held[0].release()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()


def test_a_spool_on_a_network_filesystem_locks_with_lock_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linux's NFS client has no flock for folders: flock on one succeeds, but only on this
    # host, so a replica on another host sharing the spool would deliver the same call.
    dev = os.stat(tmp_path).st_dev
    table = tmp_path / "mountinfo"  # what /proc/self/mountinfo says on such a host
    table.write_text(
        f"36 25 {os.major(dev)}:{os.minor(dev)} /export {tmp_path} rw,relatime shared:1"
        " - nfs4 server:/export rw,vers=4.2\n"
    )
    monkeypatch.setattr(_lock, "_MOUNTINFO", str(table))
    monkeypatch.setattr(_lock, "_network_parents", {})
    outbox = Outbox(tmp_path / "spool")
    outbox.put_started("c1", {"pipecatCallId": "c1"})
    key = call_key("c1")
    lock = outbox.try_lock(key, create=False)
    assert lock is not None
    assert [p.name for p in outbox.locks_dir.iterdir()] == [f"{key}.lock"]
    assert Outbox(tmp_path / "spool").try_lock(key) is None
    lock.release()
    assert list(outbox.locks_dir.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's mount table")
def test_a_spool_on_a_local_filesystem_locks_its_folders(tmp_path: Path) -> None:
    assert _lock.fs_type(os.stat(tmp_path).st_dev) not in (None, *_lock._NETWORK_FS)
    outbox = Outbox(tmp_path / "spool")
    outbox.put_started("c1", {"pipecatCallId": "c1"})
    lock = outbox.try_lock(call_key("c1"), create=False)
    assert lock is not None
    assert list(outbox.locks_dir.iterdir()) == []  # no file made per lock
    lock.release()
