"""examples/bot.py on a phone call, fully offline, into an embedded local Roark.

    pip install -e '.[bot]'      # and espeak-ng: apt-get install espeak-ng
    python examples/offline_call.py

The same ``bot()`` as a real deployment: Pipecat's Deepgram, OpenAI and Cartesia services
and Silero VAD, behind its Twilio websocket transport. Only the vendors' APIs are stand-ins
(``offline/vendors.py``) and the caller is a Twilio media stream speaking espeak-ng lines
(``offline/callers.py``). Prints the call as the local Roark received it (~25 s).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from offline.callers import TwilioCaller
from offline.serve import phone_server
from offline.vendors import Vendors

from pipecat_roark_otel.devserver import LocalRoark

LINES = ["I'd like to check on my order.", "Great thanks bye."]


async def call(roark: LocalRoark, spool: Path) -> dict[str, object]:
    os.environ.update(
        ROARK_API_KEY=roark.api_key, ROARK_BASE_URL=roark.base_url, ROARK_SPOOL_DIR=str(spool)
    )
    async with Vendors() as vendors:
        os.environ.update(vendors.env())
        import bot  # reads the environment when it builds the pipeline

        async with phone_server(bot.bot) as (url, runs):
            caller = TwilioCaller(url, hangups=vendors.hangups, on_say=vendors.caller_says)
            await caller.dial()
            await caller.wait_for_bot()  # the greeting
            for line in LINES:
                print(f"caller: {line}")
                await caller.say(line)
                if line != LINES[-1]:
                    await caller.wait_for_bot()
            await asyncio.wait_for(caller.stopped.wait(), 30)  # the bot says goodbye, hangs up
            await caller.hang_up()
            await runs.wait_finished()
    deadline = time.monotonic() + 30
    while not (calls := roark.calls()) or calls[0]["status"] != "ended":
        if time.monotonic() > deadline:
            raise TimeoutError("the call did not reach the local Roark")
        await asyncio.sleep(0.2)
    return roark.wait_for_call_ended(str(calls[0]["pipecatCallId"]))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalRoark(data_dir=Path(tmp, "roark")) as roark:
        record = asyncio.run(call(roark, Path(tmp, "spool")))
        ended = record["ended"]
        assert isinstance(ended, dict)
        print(f"\ncall {ended['pipecatCallId']}: {ended['callEndedReason']}")
        for turn in ended.get("transcript", []):
            print(f"  {turn['audioOffsetMs']:>6} ms  {turn['role']:>9}: {turn['content']}")
        for tool in ended.get("toolCalls", []):
            print(
                f"  {tool['kind']}: {tool.get('name', '')} {tool.get('arguments', '')}"
                f"{tool.get('content', '')}"
            )
        wav = roark.wav_bytes(ended["pipecatCallId"]) or b""
        print(
            f"  recording: {ended.get('recordingSampleRate')} Hz, "
            f"{ended.get('recordingNumChannels')} channels, {len(wav)} bytes of WAV"
        )


if __name__ == "__main__":
    main()
