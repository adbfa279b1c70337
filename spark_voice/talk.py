"""`spark-voice talk`: a live conversation through the microphone and the speakers.

The microphone's 20 ms frames go through a VoiceSession (streaming STT with VAD, partials, a turn
per final transcript); answers are spoken sentence by sentence as the LLM writes them. Speaking
over the assistant pauses it: a real word cancels its answer (barge-in), a back-channel ("はい",
"uh-huh") or a cough lets it go on where it stopped (BARGE_IN_*). Use headphones, or `--no-barge-in`
to mute the microphone while the assistant speaks (speakers would otherwise let it interrupt itself).
"""

from __future__ import annotations

import sys
import threading
import time

from .types import Stage


def add_parser(sub, common) -> None:
    p = common(sub.add_parser("talk", help="live conversation: microphone -> assistant -> speakers"))
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--input-device", help="microphone (index or name; see --list-devices)")
    p.add_argument("--output-device", help="speakers (index or name)")
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.add_argument("--no-barge-in", action="store_true",
                   help="mute the microphone while the assistant speaks (for speakers without headphones)")
    p.add_argument("--language", help="override STT_LANGUAGE (ja, en, auto)")
    p.add_argument("--voice", help="TTS voice (see `spark-voice voices`)")
    p.set_defaults(func=cmd_talk)


def _device(value: str | None):
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def cmd_talk(args) -> int:
    from .audio.devices import Microphone, Speaker, input_devices, output_devices
    from .cli_common import pipeline_for
    from .session import VoiceSession

    if args.list_devices:
        for kind, devs in (("input", input_devices()), ("output", output_devices())):
            for d in devs:
                print(f"{kind:<6} {d['index']:>3}  {d['name']}{'  (default)' if d['default'] else ''}")
        return 0
    _, pipe = pipeline_for(args)
    speaker = Speaker(device=_device(args.output_device))
    lock = threading.Lock()
    quiet_until = [0.0]

    def show(line: str, *, partial: bool = False) -> None:
        with lock:
            sys.stdout.write(("\r\033[K" + line) if partial else ("\r\033[K" + line + "\n"))
            sys.stdout.flush()

    def emit(ev) -> None:
        if ev.stage == Stage.STT_PARTIAL:
            show(f"… {ev.text}", partial=True)
        elif ev.stage == Stage.STT_FINAL:
            show(f"you: {ev.text}")
        elif ev.stage == Stage.LLM_SENTENCE:
            show(f"assistant: {ev.text}")
        elif ev.stage == Stage.TTS_CHUNK and ev.audio is not None:
            speaker.play(ev.audio)
            quiet_until[0] = time.monotonic() + ev.audio.duration + 0.3
        elif ev.stage == Stage.TURN_PAUSED:  # speech over the answer: hold the audio until it is clear
            speaker.pause()
        elif ev.stage == Stage.TURN_RESUMED:  # a back-channel or a cough: go on where it stopped
            speaker.resume()
        elif ev.stage == Stage.TURN_BARGE_IN:
            speaker.clear()
            show("(interrupted)")
        elif ev.stage == "error":
            show(f"error: {ev.text}")

    print(f"listening ({pipe.language}); speak, Ctrl-C to stop", file=sys.stderr)
    session = VoiceSession(pipe, emit)
    try:
        with Microphone(device=_device(args.input_device)) as mic:
            for frame in mic.frames(args.seconds):
                if args.no_barge_in and (speaker.speaking or time.monotonic() < quiet_until[0]):
                    continue  # the assistant is speaking: do not listen to it
                session.feed(frame)
                if speaker.error is not None:
                    raise speaker.error
            session.flush()
            session.wait(30.0)
            while speaker.speaking:
                time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
        speaker.close()
        summary = pipe.latency.summary()["metrics"]
        if summary:
            print("latency p50: " + ", ".join(f"{k} {v['p50_ms']:.0f} ms" for k, v in summary.items()),
                  file=sys.stderr)
    return 0
