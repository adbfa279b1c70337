"""The voice page (GET /) in a real headless Chromium with a fake microphone.

Debian's chromium (scripts/bootstrap.sh installs it) is driven by playwright through
`executable_path` — no browser download. Chromium's fake capture device plays a bundled clip
(examples/audio/question_en.wav as 48 kHz PCM16 with silence around it) into getUserMedia.
Against the mock profile and the dev profile (real whisper, SmolLM2, Piper): the page shows the
clip's transcript and an answer, answer audio is scheduled for playback, a typed turn works,
talking over the answer flushes playback. The same spoken turn is then sent over WS /v1/voice by a
Python client, and the two first-audio times (stop sent -> first audio chunk handled) are printed
side by side. A screenshot is saved under the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from test_serve import KEY, Server

from conftest import ROOT, dev_server_settings, need
from spark_voice.audio.io import load_audio
from spark_voice.config import Settings
from spark_voice.serve.app import create_app

CLIP = ROOT / "examples" / "audio" / "question_en.wav"
LEAD_S, TAIL_S = 0.5, 4.0  # silence before / after the question in the fake microphone's loop
CHROMIUM = "/usr/bin/chromium"


def fake_mic_wav(path) -> float:
    """The clip as Chromium's fake capture reads it: 16-bit PCM WAV (48 kHz). Returns the speech end (s)."""
    a = load_audio(CLIP, 48000).samples
    silence = np.zeros(int(LEAD_S * 48000), np.float32)
    sf.write(path, np.concatenate([silence, a, np.zeros(int(TAIL_S * 48000), np.float32)]), 48000,
             subtype="PCM_16")
    return LEAD_S + len(a) / 48000


def launch(pw, wav, *, allow_mic: bool = True):
    need(shutil.which("chromium") is not None or shutil.which(CHROMIUM) is not None,
         "chromium missing: scripts/bootstrap.sh installs it (apt-get install chromium, as root)")
    mic = ["--use-fake-ui-for-media-stream"] if allow_mic else []  # without it the permission is refused
    return pw.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, headless=True, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required", *mic, "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}"])


def stats(page) -> dict:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.svStats))")


def wait(page, expr: str, timeout_s: float) -> None:
    page.wait_for_function(expr, timeout=timeout_s * 1000, polling=50)


def settle(page, timeout_s: float, quiet_s: float = 1.5) -> dict:
    """Wait until nothing plays and no event has come for `quiet_s`; returns svStats."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        s = stats(page)
        key = (s["events"], s["chunksScheduled"], s["turnsDone"])
        if key == last and s["playing"] == 0:
            return s
        assert time.monotonic() < deadline, f"the page did not settle: {s}"
        last = key
        time.sleep(quiet_s)


async def ws_first_audio(srv: Server, key: str | None) -> dict:
    """The same spoken turn over WS /v1/voice: 16 kHz frames paced in real time, then stop.
    Returns ms from the end of the user's turn (speech_end received or stop sent, whichever came
    first, as the page measures it) and from the final transcript to the first audio chunk received,
    and the transcript."""
    a = load_audio(CLIP, 16000).samples
    audio = np.concatenate([np.zeros(int(LEAD_S * 16000), np.float32), a, np.zeros(int(0.4 * 16000), np.float32)])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    turns: dict[str, dict[str, float]] = {}  # request_id -> client times (perf_counter) and server t_ms
    finals: list[tuple[str, str]] = []  # (request_id, text) of each utterance
    state = {"stop": float("inf"), "chunk_rid": ""}
    async with websockets.connect(srv.url.replace("http", "ws") + "/v1/voice", additional_headers=headers,
                                  max_size=None) as ws:

        async def receive() -> None:
            # the clip may come out as more than one utterance: the last one with an answer is measured
            while True:
                try:
                    msg = await asyncio.wait_for(ws.recv(), 1.0)
                except asyncio.TimeoutError:
                    msg = None
                now = time.perf_counter()
                if isinstance(msg, bytes):
                    turns.setdefault(state["chunk_rid"], {}).setdefault("audio", now)
                elif msg is not None:
                    ev = json.loads(msg)
                    m = turns.setdefault(ev.get("request_id", ""), {})
                    if ev["type"] == "stt.speech_end":
                        m.setdefault("speech_end", now)
                    elif ev["type"] == "stt.final" and ev.get("text", "").strip():
                        m.update(final=now, final_t_ms=ev["t_ms"])
                        finals.append((ev["request_id"], ev["text"]))
                    elif ev["type"] == "tts.chunk":
                        m.setdefault("chunk_t_ms", ev["t_ms"])
                        state["chunk_rid"] = ev["request_id"]
                    elif ev["type"] == "turn.done":
                        m["done"] = now
                last = turns.get(finals[-1][0], {}) if finals else {}
                if now > state["stop"] and "done" in last and "audio" in last:
                    return

        reader = asyncio.create_task(receive())
        await ws.send(json.dumps({"type": "start", "format": "pcm"}))
        t0 = time.perf_counter()
        for i in range(0, len(pcm), 320):
            await ws.send(pcm[i:i + 320].tobytes())
            await asyncio.sleep(max(0.0, t0 + (i + 320) / 16000 - time.perf_counter()))
        state["stop"] = time.perf_counter()
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, 300)
    m = turns[finals[-1][0]]
    end = min(state["stop"], m.get("speech_end", state["stop"]))
    speech_done = t0 + LEAD_S + clip_speech_end_s()  # when the clip's last loud frame was sent
    return {"ms": (m["audio"] - end) * 1000.0, "after_final_ms": (m["audio"] - m["final"]) * 1000.0,
            "after_speech_ms": (m["audio"] - speech_done) * 1000.0,
            "server_ms": m["chunk_t_ms"] - m["final_t_ms"], "transcript": " ".join(t for _, t in finals)}


def _loud_frames() -> np.ndarray:
    """Indices of the clip's 20 ms frames above -45 dBFS (the page's onset rule, app.js micLevel)."""
    a = load_audio(CLIP, 16000).samples
    frames = a[: len(a) // 320 * 320].reshape(-1, 320)
    return np.flatnonzero(10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12) > -45)


def clip_onset_s() -> float:
    """Where the page's level meter sees the clip start: its first loud frame."""
    loud = _loud_frames()
    return float(loud[0]) * 0.02 if len(loud) else 0.0


def clip_speech_end_s() -> float:
    """Where the user stops speaking in the clip: the end of its last loud frame."""
    loud = _loud_frames()
    return float(loud[-1] + 1) * 0.02 if len(loud) else 0.0


def page_now(page) -> float:
    return float(page.evaluate("() => performance.now()"))


def hold_for_question(page, start_ms: float, speech_s: float) -> None:
    """Press-to-talk around the clip that starts at `start_ms` (page clock): press shortly before
    it, release 0.4 s after it ends — the same audio the /v1/voice client sends."""
    talk = page.locator("#talk")
    talk.hover()
    wait_s = (start_ms - page_now(page)) / 1000.0 - 0.35
    if wait_s > 0:
        time.sleep(wait_s)
    page.mouse.down()
    time.sleep(max(0.0, (start_ms - page_now(page)) / 1000.0 + speech_s + 0.4))
    page.mouse.up()


def page_spoken_turn(page, loop_s: float, speech_s: float, timeout_s: float) -> dict:
    """One spoken press-to-talk turn on the whole question: the fake microphone loops the file, so
    the next loop's onset is the first onset the page saw plus whole loops. Starts a new
    conversation first, like the /v1/voice client's new session. Returns the turn's firstAudio."""
    resets = stats(page).get("resets", 0)
    page.click("#reset")  # a new conversation, as the /v1/voice client has: the history lengthens the prompt
    wait(page, f"() => (window.svStats.resets || 0) > {resets}", timeout_s)
    assert page.locator(".msg").count() == 0
    s = stats(page)
    first = s["micOnsets"][0]
    loops = max(0, int((page_now(page) + 600.0 - first) // (loop_s * 1000.0)) + 1)
    onset = first + loops * loop_s * 1000.0
    hold_for_question(page, onset - clip_onset_s() * 1000.0, speech_s)  # the clip's start, its end + 0.4 s
    wait(page, f"() => window.svStats.turnsDone > {s['turnsDone']} "
               f"&& window.svStats.firstAudio.length > {len(s['firstAudio'])}", timeout_s)
    after = settle(page, timeout_s)
    fa = dict(after["firstAudio"][-1])
    # the user's end of speech: the clip's last sample reached the page (the onset is where the
    # level meter saw the clip start)
    speech_done = onset + (clip_speech_end_s() - clip_onset_s()) * 1000.0  # page clock
    fa["after_speech_ms"] = fa["at"] - speech_done
    fa["stop_after_speech_ms"] = after["lastStopAt"] - speech_done
    return fa


def run_page(srv: Server, tmp_path, *, key: str | None, timeout_s: float, spoken_check,
             hands_free: bool = False, pairs: int = 2, sources: bool = False) -> None:
    from playwright.sync_api import sync_playwright

    wav = tmp_path / "fake_mic.wav"
    speech_end = fake_mic_wav(wav)
    speech_s = speech_end - LEAD_S
    loop_s = float(sf.info(str(wav)).duration)
    errors: list[str] = []
    # one turn first, so that neither measured turn pays the engines' first-call costs
    warm = asyncio.run(ws_first_audio(srv, key))
    spoken_check(warm["transcript"])
    measured: list[tuple[dict, dict]] = []  # (page firstAudio, /v1/voice) of the same spoken question
    with sync_playwright() as pw:
        browser = launch(pw, wav)
        try:
            page = browser.new_page(viewport={"width": 820, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(srv.url + "/")
            if key:  # the page asks for the key once, then keeps it
                page.wait_for_selector("#keyform:not([hidden])", timeout=10_000)
                page.fill("#key", key)
                page.click("#keyform button")
            wait(page, "() => window.svStats && window.svStats.connected && window.svStats.ready", 60)
            assert page.locator("#talk").is_enabled()
            # the key stays in HTTP headers: the websocket was opened with a session token
            assert stats(page)["wsAuth"] == ("token" if key else "none")
            wait(page, "() => document.getElementById('providers').textContent.includes('llm: ')", 20)

            # 1. a spoken turn, press to talk: the microphone opens on the press and the fake device
            # starts its file then; hold until the question has been said
            talk = page.locator("#talk")
            talk.hover()
            page.mouse.down()
            wait(page, "() => window.svStats.micOnsets.length > 0", 30)
            clip_end_ms = stats(page)["micOnsets"][0] + (speech_s - clip_onset_s()) * 1000.0
            time.sleep(max(0.0, (clip_end_ms - page_now(page)) / 1000.0 + 0.4))
            page.mouse.up()
            wait(page, "() => window.svStats.turnsDone >= 1 && window.svStats.chunksScheduled > 0 "
                       "&& window.svStats.firstAudio.length > 0", timeout_s)
            s = settle(page, timeout_s)
            assert not s["micError"], s["micError"]
            assert s["framesSent"] > 100  # 20 ms frames while the button was held
            said = [u.strip() for u in page.locator(".msg.user .body").all_inner_texts()]
            spoken_check(" ".join(said))
            assert s["lastTranscript"] in said
            assert s["lastAnswer"] and page.locator(".msg.bot").last.inner_text().strip().startswith(
                s["lastAnswer"][:20])
            assert s["firstAudio"][-1]["from"] in ("speech_end", "stop")
            wait(page, "() => [...document.querySelectorAll('.msg.bot .meta')]"
                       ".some((m) => m.textContent.includes('first audio'))", 30)
            assert page.evaluate("() => document.getElementById('level').style.transform") != ""

            # the same spoken question, page then /v1/voice, `pairs` times: same server, same load
            for _ in range(pairs):
                page_first = page_spoken_turn(page, loop_s, speech_s, timeout_s)
                assert page_first["from"] in ("speech_end", "stop")
                # the log holds this turn only (a new conversation); the clip may come out as two utterances
                spoken_check(" ".join(page.locator(".msg.user .body").all_inner_texts()))
                with ThreadPoolExecutor(1) as pool:  # playwright's sync API owns this thread's event loop
                    ws = pool.submit(asyncio.run, ws_first_audio(srv, key)).result()
                spoken_check(ws["transcript"])
                measured.append((page_first, ws))

            # 2. a typed turn (after the answer has been played out)
            s = settle(page, timeout_s)
            bots = page.locator(".msg.bot").count()
            page.fill("#text", "What is the capital of Japan?")
            page.press("#text", "Enter")
            wait(page, f"() => window.svStats.turnsDone > {s['turnsDone']} "
                       f"&& window.svStats.chunksScheduled > {s['chunksScheduled']}", timeout_s)
            assert page.locator(".msg.user .body").last.inner_text().strip() == "What is the capital of Japan?"
            assert page.locator(".msg.bot").count() == bots + 1
            if sources:  # rag.hits shown under the answer
                assert "fuji.md" in page.locator(".msg.bot").last.locator(".sources").inner_text()

            # 3. barge-in: talk while the answer plays -> playback flushed at once, the answer cancelled
            s = settle(page, timeout_s)
            interrupted = page.locator(".msg.bot.interrupted").count()
            page.fill("#text", "Tell me about Mount Fuji in a few sentences.")
            page.press("#text", "Enter")
            wait(page, f"() => window.svStats.chunksScheduled > {s['chunksScheduled']}", timeout_s)
            talk.hover()
            page.mouse.down()
            b = stats(page)
            time.sleep(0.6)
            page.mouse.up()
            assert b["flushes"] > s["flushes"] and b["lastFlush"]["stopped"] >= 1, b.get("lastFlush")
            wait(page, f"() => window.svStats.turnsDone >= {s['turnsDone'] + 1}", timeout_s)
            assert page.locator(".msg.bot.interrupted").count() == interrupted + 1
            assert "interrupted" in page.locator(".msg.bot.interrupted .meta").last.inner_text()

            if hands_free:  # 4. hands-free: the server's VAD ends the utterance of the looping microphone
                wait(page, "() => window.svStats.playing === 0", timeout_s)
                done = stats(page)["turnsDone"]
                page.select_option("#mode", "free")
                talk.focus()
                page.keyboard.press("Enter")  # keyboard: Enter/Space on the focused button
                assert talk.get_attribute("aria-pressed") == "true"
                wait(page, f"() => window.svStats.turnsDone > {done} && window.svStats.firstAudio.some("
                           "(f) => f.from === 'speech_end')", timeout_s)
                page.keyboard.press("Enter")
                assert talk.get_attribute("aria-pressed") == "false"

            settle(page, timeout_s)  # the last utterance's final and answer shown, not "…"
            shot = tmp_path / "voice-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            print(f"\nscreenshot: {shot}")
            # a phone screen: nothing wider than the viewport, the controls reachable
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
            assert page.locator("#talk").is_visible() and page.locator("#text").is_visible()
            page.screenshot(path=str(tmp_path / "voice-page-phone.png"), full_page=True)
        finally:
            browser.close()
    # the key check's 401 (before the key was entered) is the only failed request allowed
    assert not [e for e in errors if "status of 401" not in e], errors

    report_first_audio(measured)


def report_first_audio(measured: list[tuple[dict, dict]]) -> None:
    """The same spoken question, first audio measured by each client (printed, never asserted: a
    benchmark). Medians over the pairs: the server's own time varies from turn to turn on a busy box."""
    print(f"\nfirst audio of the same spoken question, page vs /v1/voice, {len(measured)} pairs in this run:")
    for i, (p, v) in enumerate(measured):
        print(f"  pair {i + 1}: end of speech -> first audio page {p['after_speech_ms']:.0f} ms, /v1/voice "
              f"{v['after_speech_ms']:.0f} ms; final transcript -> first audio page {p['after_final_ms']:.0f} ms, "
              f"/v1/voice {v['after_final_ms']:.0f} ms (the page released the button "
              f"{p['stop_after_speech_ms']:.0f} ms after the end of speech)")
    for what, key_ in (("the end of speech", "after_speech_ms"), ("the final transcript", "after_final_ms")):
        p = float(np.median([m[0][key_] for m in measured]))
        v = float(np.median([m[1][key_] for m in measured]))
        per_pair = float(np.median([m[0][key_] / m[1][key_] for m in measured]))
        print(f"median first audio after {what}: page {p:.0f} ms, /v1/voice {v:.0f} ms, "
              f"page - voice = {p - v:+.0f} ms, page / voice = {p / v:.2f}, median of the pairs' ratios "
              f"{per_pair:.2f} (goal: within 10 %)")
    # what each client adds on top of the server's own final -> first audio (event times)
    for name, i in (("page", 0), ("/v1/voice", 1)):
        added = float(np.median([m[i]["after_final_ms"] - m[i]["server_ms"] for m in measured]))
        print(f"{name}: median time added by the client and transport after the server's first audio {added:.0f} ms")


def test_page_served_with_headers(tmp_path):
    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock", SERVE_API_KEY=KEY)
    with Server(create_app(s)) as srv:
        for path in ("/", "/ui"):
            r = httpx.get(srv.url + path)  # the page is open; the key guards the API behind it
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "/static/app.js" in r.text and "default-src 'self'" in r.headers["content-security-policy"]
        for name, ctype in (("app.js", "text/javascript"), ("audio-worklet.js", "text/javascript"),
                            ("style.css", "text/css")):
            r = httpx.get(f"{srv.url}/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype) and len(r.content) > 500
        assert httpx.get(srv.url + "/static/../config.py").status_code in (401, 404)  # never the file
        assert httpx.get(srv.url + "/static/nothing.js").status_code == 404
        # nothing on the page comes from elsewhere
        for name in ("index.html", "app.js", "style.css"):
            text = (ROOT / "spark_voice" / "serve" / "static" / name).read_text()
            assert "http://" not in text and "https://" not in text, name


def test_page_mock_profile(tmp_path):
    from spark_voice.backends.mock import MockEmbedder
    from spark_voice.rag.ingest import ingest

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fuji.md").write_text("Mount Fuji is 3776 metres high. It is the highest mountain in Japan.\n")
    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock", SERVE_API_KEY=KEY,
                      STT_LANGUAGE="en", RAG_INDEX_PATH=str(tmp_path / "index.bin"), RAG_MIN_SCORE="0")
    ingest(docs, s.rag_index_path, MockEmbedder(), s, progress=False)  # the page lists retrieved sources
    with Server(create_app(s)) as srv:
        srv.wait_ready()

        def check(text: str) -> None:
            assert "mock transcript" in text

        run_page(srv, tmp_path, key=KEY, timeout_s=30, spoken_check=check, hands_free=True, pairs=1,
                 sources=True)


def test_page_not_ready_and_microphone_denied(tmp_path):
    """Models not loaded yet (/ready 503) and the microphone refused: the page says so, typing works."""
    from playwright.sync_api import sync_playwright

    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock", STT_LANGUAGE="en")
    wav = tmp_path / "fake_mic.wav"
    fake_mic_wav(wav)
    with Server(create_app(s, load=False)) as srv, sync_playwright() as pw:
        browser = launch(pw, wav, allow_mic=False)
        try:
            page = browser.new_page()
            page.goto(srv.url + "/ui")
            page.wait_for_selector("#notice:not([hidden])", timeout=10_000)
            assert "not ready" in page.inner_text("#notice") and "first use" in page.inner_text("#notice")
            assert "not ready" in page.inner_text("#status")
            wait(page, "() => window.svStats && window.svStats.connected", 10)
            page.locator("#talk").click()
            wait(page, "() => window.svStats.micError !== ''", 10)
            assert "Microphone" in page.inner_text("#notice") or "microphone" in page.inner_text("#notice")
            assert page.locator("#talk").get_attribute("aria-pressed") == "false"
            page.fill("#text", "Hello there")
            page.press("#text", "Enter")  # typed turns need no microphone (models load on first use)
            wait(page, "() => window.svStats.turnsDone >= 1", 30)
            assert "Hello there" in page.locator(".msg.bot").first.inner_text()
        finally:
            browser.close()


@pytest.mark.real
def test_page_dev_profile(dev_settings, tmp_path):
    s = dev_server_settings(dev_settings)
    with Server(create_app(s)) as srv:
        srv.wait_ready(timeout=300)

        def check(text: str) -> None:
            t = text.lower()
            assert "capital" in t and "france" in t, text

        run_page(srv, tmp_path, key=None, timeout_s=240, spoken_check=check,
                 pairs=int(os.environ.get("SPARK_VOICE_PAGE_PAIRS", "3")))
