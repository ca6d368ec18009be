"""Inspect and resend dead letters: items Roark refused permanently, kept on disk.

    python -m pipecat_roark_otel.exporter.deadletters --spool-dir DIR list
    python -m pipecat_roark_otel.exporter.deadletters --spool-dir DIR show KEY
    python -m pipecat_roark_otel.exporter.deadletters --spool-dir DIR resend KEY
    python -m pipecat_roark_otel.exporter.deadletters --spool-dir DIR purge KEY

KEY is the call's directory name from ``list`` or the raw call id. ``resend``
moves the items back into the live queue; the next process (or the running one)
delivers them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import (
    ENV_API_KEY,
    ENV_SPOOL_DIR,
    resolve_api_key,
    resolve_base_url,
    resolve_spool_dir,
)
from ._dead import DeadLetters
from ._outbox import Outbox


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipecat_roark_otel.exporter.deadletters", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--spool-dir",
        help=f"the spool directory (default: ${ENV_SPOOL_DIR}, else the workspace's own: "
        f"--base-url and ${ENV_API_KEY})",
    )
    p.add_argument("--base-url", help="picks the default spool dir when --spool-dir is not given")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per call with dead letters")
    for name, what in (
        ("show", "items and reasons of one call"),
        ("resend", "move a call's dead letters back into the live queue"),
        ("purge", "delete a call's dead letters"),
    ):
        sub.add_parser(name, help=what).add_argument("key", help="directory name or call id")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.spool_dir is None and not os.environ.get(ENV_SPOOL_DIR, "").strip():
        try:
            spool = resolve_spool_dir(None, resolve_base_url(args.base_url), resolve_api_key(None))
        except ValueError as exc:
            sys.stderr.write(f"{exc} (or pass --spool-dir)\n")
            return 2
    else:
        spool = resolve_spool_dir(args.spool_dir, "", "")
    dead = DeadLetters(Outbox(Path(spool)))
    out = sys.stdout
    if args.command == "list":
        for key in dead.call_keys():
            info = dead.info(key) or {}
            reasons = info.get("reasons", {})
            statuses = sorted({str(r.get("status")) for r in reasons.values()})
            out.write(
                f"{key}  call={info.get('callId')}  items={len(info.get('items', []))}"
                f"  status={','.join(statuses) or '-'}\n"
            )
        return 0
    key = dead.resolve(args.key)
    if args.command == "show":
        shown = dead.info(key)
        if shown is None:
            sys.stderr.write(f"no dead letters for {args.key}\n")
            return 1
        out.write(json.dumps(shown, indent=2, ensure_ascii=False) + "\n")
        return 0
    if args.command == "resend":
        try:
            moved = dead.resend(key)
        except BlockingIOError as exc:
            sys.stderr.write(f"{exc}\n")
            return 2
        if not moved:
            sys.stderr.write(f"no dead letters for {args.key}\n")
            return 1
        out.write(f"moved {moved} item(s) of {key} back to the queue\n")
        return 0
    if not dead.purge(key):
        sys.stderr.write(f"no dead letters for {args.key}\n")
        return 1
    out.write(f"purged {key}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
