// spark-voice page: microphone -> WS /v1/voice (16 kHz PCM16) -> events + PCM answer audio, played
// gaplessly as it arrives and flushed at once on barge-in. No build step, nothing from elsewhere.
// window.svStats exposes counters for tests and curious users (chunks scheduled, flushes, latencies).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "spark-voice.key";
  const stats = (window.svStats = {
    ready: false, connected: false, sessions: 0, framesSent: 0, chunksReceived: 0, chunksScheduled: 0,
    scheduledSeconds: 0, playing: 0, flushes: 0, paused: 0, resumed: 0, turnsDone: 0, firstAudio: [], lastTranscript: "", lastAnswer: "",
    micError: "", errors: [], events: 0, micOnsets: [], wsAuth: "",
  });
  let key = "";
  try { key = localStorage.getItem(KEY_STORE) || ""; } catch (e) { /* storage disabled */ }
  let ws = null, wsWanted = false, retryTimer = null, healthTimer = 0;
  // two audio contexts: playback is suspended while a possible interruption is judged (turn.paused),
  // the microphone must keep running meanwhile
  let ctx = null, micCtx = null, node = null, micStream = null, micStarting = null, paused = false;
  let talking = false, handsFree = false, pressAt = 0;
  let nextAudio = null;             // the tts.chunk event whose binary frame comes next
  const playing = new Set();        // scheduled AudioBufferSourceNodes
  let playHead = 0;                 // context time where the next chunk starts
  let origin = null;                // {t, kind, user}: a typed turn not yet claimed by its events
  let utterance = null;             // request_id of the utterance being spoken (speech_start, no final yet)
  const turns = new Map();          // request_id -> turn view state
  let voicesShown = false;

  // ------------------------------------------------------------------ small helpers
  function notice(text, kind) {
    const n = $("notice");
    n.textContent = text || "";
    n.className = "notice" + (kind ? " " + kind : "");
    n.hidden = !text;
  }
  function setStatus(text, cls) { const s = $("status"); s.textContent = text; s.className = "pill " + (cls || ""); }
  function authHeaders() { return key ? { Authorization: "Bearer " + key } : {}; }
  // Text updates are applied once per frame: reading scrollHeight forces a layout, and a layout per
  // token would delay the audio frames queued behind the token events on this (only) thread.
  const dirty = new Map();          // element -> [text, partial]
  let frame = 0;
  function scrollDown() { if (!frame) frame = requestAnimationFrame(render); }
  function render() {
    frame = 0;
    for (const [el, [text, partial]] of dirty) {
      const b = el.querySelector(".body");
      b.textContent = text;
      b.classList.toggle("partial", !!partial);
    }
    dirty.clear();
    const l = $("log");
    l.scrollTop = l.scrollHeight;
  }
  function fmt(ms) { return ms == null ? "–" : Math.round(ms) + " ms"; }

  function turnView(rid) {
    let t = turns.get(rid);
    if (!t) {
      t = { rid, user: null, bot: null, text: "", ev: {}, origin: null, cancelled: false, firstAudioMs: null, typed: false };
      turns.set(rid, t);
    }
    return t;
  }
  function bubble(cls, text) {
    const d = document.createElement("div");
    d.className = "msg " + cls;
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = text || "";
    d.appendChild(body);
    $("log").appendChild(d);
    scrollDown();
    return d;
  }
  function userBubble(t) { if (!t.user) t.user = bubble("user", ""); return t.user; }
  function botBubble(t) { if (!t.bot) t.bot = bubble("bot", ""); return t.bot; }
  function setBody(el, text, partial) {
    dirty.set(el, [text, partial]);
    scrollDown();
  }
  function meta(el, text) {
    let m = el.querySelector(".meta");
    if (!m) { m = document.createElement("span"); m.className = "meta"; el.appendChild(m); }
    m.textContent = text;
  }

  // ------------------------------------------------------------------ server state: key, /ready, /health
  async function checkKey() {
    try {
      const r = await fetch("/v1/models", { headers: authHeaders() });
      if (r.status === 401) {
        $("keyform").hidden = false;
        setStatus("API key needed", "warn");
        if (key) notice("The API key was refused; enter the server's SERVE_API_KEY.");
        $("key").focus();
        return false;
      }
      $("keyform").hidden = true;
      return true;
    } catch (e) {
      setStatus("server unreachable", "err");
      notice("The server is not reachable. Is `spark-voice serve` running?");
      return false;
    }
  }

  async function pollHealth() {
    let ready = false;
    try {
      // with the key, /health has the details (providers, fallbacks); without it, the public part
      const [h, r] = await Promise.all([fetch("/health", { headers: authHeaders() }), fetch("/ready")]);
      const body = await h.json();
      ready = r.status === 200;
      const warnings = body.warnings || [];
      const ul = $("warnings");
      ul.replaceChildren(...warnings.map((w) => { const li = document.createElement("li"); li.textContent = w; return li; }));
      ul.hidden = warnings.length === 0;
      const prov = Object.entries(body.providers || {}).filter(([, p]) => p && p.provider).map(([role, p]) =>
        `${role}: ${p.provider}${p.is_mock ? " (mock)" : ""}${p.fallback_count ? `, fell back ${p.fallback_count}×` : ""}`);
      $("providers").textContent = [body.profile ? `profile ${body.profile}` : "", ...prov].filter(Boolean).join(" · ");
      if (!ready) {
        const roles = Object.entries(body.providers || {});
        const done = roles.filter(([, p]) => p.ready).length;
        const failed = roles.filter(([, p]) => p.state === "failed").map(([r, p]) => `${r}: ${p.last_error}`);
        const lazy = roles.length && roles.every(([, p]) => p.state === "lazy" || p.ready);
        setStatus(stats.connected ? "connected · not ready" : "not ready", "warn");
        notice(failed.length ? "A model failed to load — " + failed.join("; ")
               : lazy ? "The server is not ready yet: models load on first use (started with --no-load), "
                        + "so the first answer takes longer."
               : `The server is not ready yet: models are loading (${done}/${roles.length} ready).`,
               failed.length ? "" : "info");
      }
    } catch (e) {
      setStatus("server unreachable", "err");
      notice("The server is not reachable. Is `spark-voice serve` running?");
    }
    if (ready && !stats.ready) {
      notice("");
      setStatus(stats.connected ? "ready" : "connecting…", stats.connected ? "ok" : "");
    }
    stats.ready = ready;
    clearTimeout(healthTimer);
    healthTimer = setTimeout(pollHealth, ready ? 15000 : 2000);
    return ready;
  }

  // ------------------------------------------------------------------ the websocket
  async function sessionToken() {
    // the key stays in HTTP headers: the websocket carries a short-lived token (POST /v1/session-token)
    let r;
    try {
      r = await fetch("/v1/session-token", {
        method: "POST", headers: { ...authHeaders(), "Content-Type": "application/json" }, body: "{}",
      });
    } catch (e) {
      return null;
    }
    if (!r.ok) return null;
    return (await r.json()).token || null;
  }

  async function connect() {
    clearTimeout(retryTimer);
    wsWanted = true;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/voice";
    const protocols = ["spark-voice.v1"];
    if (key) {
      const token = await sessionToken();
      if (!token) {   // the key was refused, or the server is away: checkKey says which and retries
        if (await checkKey() && wsWanted) retryTimer = setTimeout(connect, 3000);
        return;
      }
      protocols.push("spark-voice.token." + token);
    }
    stats.wsAuth = key ? "token" : "none";
    let sock;
    try {
      sock = new WebSocket(url, protocols);
    } catch (e) {
      notice("Cannot open the voice connection: " + e.message);
      return;
    }
    sock.binaryType = "arraybuffer";
    ws = sock;
    sock.onopen = () => {
      const start = { type: "start", format: "pcm" };
      if ($("language").value) start.language = $("language").value;
      if ($("voice").value) start.voice = $("voice").value;
      sock.send(JSON.stringify(start));
      stats.connected = true;
      setStatus(stats.ready ? "ready" : "connected · not ready", stats.ready ? "ok" : "warn");
      $("talk").disabled = false;
    };
    sock.onmessage = (m) => {
      if (sock !== ws) return;
      if (typeof m.data === "string") onEvent(JSON.parse(m.data));
      else onAudio(m.data);
    };
    sock.onclose = (e) => {
      if (sock !== ws) return;
      stats.connected = false;
      $("talk").disabled = true;
      stopTalk(false);
      if (e.code === 1008 || e.code === 1006 && !stats.sessions) {
        // refused at the handshake: a key problem or another origin; /v1/models tells which
        checkKey().then((ok) => { if (ok && wsWanted) retryTimer = setTimeout(connect, 3000); });
      } else if (wsWanted) {
        retryTimer = setTimeout(connect, 1500);
      }
      setStatus("disconnected — retrying", "err");
    };
  }

  function reconnect() {
    if (ws) { const old = ws; ws = null; old.close(); }
    flush("reconnect");
    connect();
  }

  function send(obj) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); }

  // ------------------------------------------------------------------ events
  function onEvent(ev) {
    stats.events++;
    const rid = ev.request_id;
    const t = rid ? turnView(rid) : null;
    switch (ev.type) {
      case "session.created":
        stats.sessions++;
        showVoices(ev.voices || [], ev.language);
        break;
      case "stt.speech_start":
        t.ev.speech_start = ev.t_ms;
        utterance = rid;
        setBody(userBubble(t), "…", true);
        break;
      case "stt.partial":
        if (t.ev.partial == null) t.ev.partial = ev.t_ms;
        setBody(userBubble(t), ev.text || "…", true);
        break;
      case "stt.speech_end":
        t.ev.speech_end = ev.t_ms;
        // the user's turn ended as this client sees it: the end of speech, or the release (stop) if earlier
        if (!t.origin) t.origin = { t: performance.now(), kind: "speech_end" };
        break;
      case "stt.final":
        t.ev.final = ev.t_ms;
        t.finalAt = performance.now();
        if (utterance === rid) utterance = null;
        if (ev.text) {
          setBody(userBubble(t), ev.text, false);
          stats.lastTranscript = ev.text;
        } else if (t.user) {
          t.user.remove(); t.user = null;
        }
        break;
      case "rag.hits": {
        claimOrigin(t);
        const hits = ev.hits || [];
        if (hits.length) {
          const ul = document.createElement("ul");
          ul.className = "sources";
          ul.setAttribute("aria-label", "Sources");
          for (const h of hits) {
            const li = document.createElement("li");
            li.textContent = `${h.source} (${Number(h.score).toFixed(2)})`;
            ul.appendChild(li);
          }
          botBubble(t).appendChild(ul);
        }
        break;
      }
      case "llm.token":
        claimOrigin(t);
        if (t.ev.first_token == null) t.ev.first_token = ev.t_ms;
        t.text += ev.text || "";
        setBody(botBubble(t), t.text.trim(), false);
        stats.lastAnswer = t.text.trim();
        break;
      case "tts.chunk":
        claimOrigin(t);
        if (t.ev.first_audio == null) { t.ev.first_audio = ev.t_ms; t.chunkAt = performance.now(); }
        nextAudio = ev;
        break;
      case "session.reset":
        stats.resets = (stats.resets || 0) + 1;
        break;
      case "turn.paused":
        // speech over the answer: hold what is playing until the server knows whether it was words
        paused = true;
        stats.paused++;
        if (ctx) ctx.suspend();
        break;
      case "turn.resumed":
        paused = false;
        stats.resumed++;
        if (ctx) ctx.resume();
        break;
      case "turn.barge_in":
        t.cancelled = true;
        flush("barge_in");
        if (t.bot) t.bot.classList.add("interrupted");
        break;
      case "turn.done":
        stats.turnsDone++;
        if (ev.reason === "no speech" && t.user) { t.user.remove(); t.user = null; }
        if (ev.cancelled) t.cancelled = true;
        if (t.cancelled && t.bot) t.bot.classList.add("interrupted");
        if (t.bot) meta(t.bot, latencyLine(t));
        if (ev.error && !t.bot) bubble("bot error", "The answer failed: " + ev.error);
        break;
      case "error":
        stats.errors.push(ev);
        if (ev.code === "overloaded" || ev.code === "session_error" || !rid || rid === ev.session_id) {
          notice(`${ev.message} (${ev.code})`);
        } else {
          bubble("bot error", ev.message);
        }
        break;
      default:
        break;
    }
  }

  function claimOrigin(t) {
    // a typed turn: the first turn without speech events after the text was sent
    if (!t.origin && origin && t.ev.speech_start == null && t.ev.final == null) {
      t.origin = origin;
      if (origin.user && !t.user) { t.user = origin.user; t.typed = true; }
      origin = null;
    }
  }

  function latencyLine(t) {
    const e = t.ev;
    const parts = [];
    if (e.partial != null && e.speech_start != null) parts.push("partial " + fmt(e.partial - e.speech_start));
    if (e.final != null && e.speech_end != null) parts.push("final " + fmt(e.final - e.speech_end));
    const base = e.final != null ? e.final : null;
    if (e.first_token != null && base != null) parts.push("first token " + fmt(e.first_token - base));
    if (e.first_audio != null && base != null) parts.push("first audio " + fmt(e.first_audio - base));
    if (t.firstAudioMs != null) parts.push(`heard ${fmt(t.firstAudioMs)} after ${t.origin ? t.origin.kind.replace("_", " ") : "asking"}`);
    if (t.cancelled) parts.push("interrupted");
    return parts.join(" · ");
  }

  function showVoices(voices, language) {
    if (voicesShown || !voices.length) return;
    voicesShown = true;
    const sel = $("voice");
    for (const v of voices) {
      const o = document.createElement("option");
      o.value = v.name;
      o.textContent = `${v.name} (${v.language})`;
      sel.appendChild(o);
    }
    if (language) $("language").options[0].textContent = `server default (${language})`;
  }

  // ------------------------------------------------------------------ playback
  function ensureAudio() {
    if (!ctx) ctx = new AudioContext({ latencyHint: "interactive" });
    if (ctx.state === "suspended" && !paused) ctx.resume();
    return ctx;
  }

  function onAudio(buf) {
    const ev = nextAudio;
    nextAudio = null;
    stats.chunksReceived++;
    if (!ev || ev.format !== "pcm") return;
    const t = turnView(ev.request_id);
    if (t.cancelled) return;            // a late chunk of an interrupted answer
    const a = ensureAudio();
    const pcm = new Int16Array(buf);
    if (!pcm.length) return;
    const ab = a.createBuffer(1, pcm.length, ev.sample_rate);
    const ch = ab.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = a.createBufferSource();
    src.buffer = ab;
    src.connect(a.destination);
    const at = Math.max(a.currentTime + 0.02, playHead);
    src.start(at);
    playHead = at + ab.duration;
    src.rid = t.rid;
    playing.add(src);
    stats.playing = playing.size;
    src.onended = () => { playing.delete(src); stats.playing = playing.size; };
    stats.chunksScheduled++;
    stats.scheduledSeconds += ab.duration;
    if (t.firstAudioMs == null && t.origin) {
      t.firstAudioMs = performance.now() - t.origin.t;
      stats.firstAudio.push({ request_id: t.rid, ms: t.firstAudioMs, from: t.origin.kind, at: performance.now(),
                              after_final_ms: t.finalAt != null ? performance.now() - t.finalAt : null,
                              server_ms: t.ev.final != null ? t.ev.first_audio - t.ev.final : null,
                              frame_ms: performance.now() - t.chunkAt });
    }
  }

  function flush(reason) {
    const n = playing.size;
    for (const s of playing) { try { s.stop(); } catch (e) { /* already stopped */ } }
    playing.clear();
    stats.playing = 0;
    playHead = 0;
    nextAudio = null;
    if (paused) { paused = false; if (ctx) ctx.resume(); }
    if (n || reason === "barge_in") { stats.flushes++; stats.lastFlush = { reason, stopped: n, at: performance.now() }; }
  }

  function interrupt() {
    // the user talks or types over the answer: stop playback now, stop the answer on the server
    if (playing.size) {
      const rids = new Set([...playing].map((src) => src.rid));
      for (const rid of rids) {
        const t = turnView(rid);
        t.cancelled = true;
        if (t.bot) { t.bot.classList.add("interrupted"); meta(t.bot, latencyLine(t)); }
      }
      flush("interrupt");
      send({ type: "cancel" });
    }
  }

  // ------------------------------------------------------------------ microphone
  async function startMic() {
    if (node) return true;
    if (micStarting) return micStarting;
    micStarting = (async () => {
      ensureAudio();  // playback, created within the user's gesture
      if (!micCtx) micCtx = new AudioContext({ latencyHint: "interactive" });
      const a = micCtx;
      if (a.state === "suspended") a.resume();
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        stats.micError = "unsupported";
        notice("This browser gives no microphone to this page (it needs https or localhost). You can still type.");
        return false;
      }
      try {
        micStream = await navigator.mediaDevices.getUserMedia({
          audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
        });
      } catch (e) {
        stats.micError = e.name || String(e);
        notice(e.name === "NotAllowedError"
          ? "Microphone access was denied. Allow it in the browser's site settings and reload — or type below."
          : "No microphone could be opened (" + (e.message || e.name) + "). You can still type.");
        return false;
      }
      await a.audioWorklet.addModule("/static/audio-worklet.js");
      const src = a.createMediaStreamSource(micStream);
      node = new AudioWorkletNode(a, "pcm-capture", { numberOfOutputs: 0, processorOptions: { outRate: 16000, frameMs: 20 } });
      node.port.onmessage = (e) => {
        micLevel(new Int16Array(e.data));
        if ((talking || handsFree) && ws && ws.readyState === WebSocket.OPEN) { ws.send(e.data); stats.framesSent++; }
      };
      src.connect(node);
      return true;
    })();
    const ok = await micStarting;
    micStarting = null;
    return ok;
  }

  // the input level, shown on the talk button (is the microphone working?), and the onsets of sound
  // after a quiet stretch (svStats.micOnsets, page clock: tests align the looping fake microphone)
  let quietFrames = 0, levelFrame = 0, level = 0;
  function micLevel(pcm) {
    let sum = 0;
    for (let i = 0; i < pcm.length; i++) sum += pcm[i] * pcm[i];
    const db = 10 * Math.log10(sum / Math.max(1, pcm.length) / (32768 * 32768) + 1e-12);
    if (db > -45) {
      if (quietFrames >= 15) {
        stats.micOnsets.push(performance.now());
        if (stats.micOnsets.length > 50) stats.micOnsets.shift();
      }
      quietFrames = 0;
    } else {
      quietFrames++;
    }
    level = Math.max(level * 0.8, Math.min(1, Math.max(0, (db + 60) / 50)));
    if (!levelFrame) {
      levelFrame = requestAnimationFrame(() => {
        levelFrame = 0;
        $("level").style.transform = `scaleX(${level.toFixed(3)})`;
      });
    }
  }

  async function startTalk() {
    if (talking) return;
    interrupt();
    talking = true;
    pressAt = performance.now();
    $("talk").setAttribute("aria-pressed", "true");
    $("talklabel").textContent = "Listening… release to send";
    if (!(await startMic())) stopTalk(false);
  }

  function stopTalk(sendStop = true) {
    if (!talking) return;
    talking = false;
    $("talk").setAttribute("aria-pressed", "false");
    $("talklabel").textContent = "Hold to talk";
    if (!sendStop) return;
    stats.lastStopAt = performance.now();
    if (utterance) {
      const t = turnView(utterance);
      if (!t.origin) t.origin = { t: performance.now(), kind: "stop" };
    }
    send({ type: "stop" });
  }

  async function toggleHandsFree() {
    if (handsFree) {
      handsFree = false;
      send({ type: "stop" });
    } else {
      if (!(await startMic())) return;
      handsFree = true;
    }
    $("talk").setAttribute("aria-pressed", String(handsFree));
    $("talklabel").textContent = handsFree ? "Listening — click to stop" : "Start hands-free";
  }

  function setupTalk() {
    const b = $("talk");
    b.addEventListener("pointerdown", (e) => {
      if ($("mode").value !== "ptt" || e.button !== 0) return;
      b.setPointerCapture(e.pointerId);
      if (talking) { stopTalk(); return; }   // a tap started it: a second tap sends
      startTalk();
    });
    const release = () => {
      if ($("mode").value !== "ptt" || !talking) return;
      if (performance.now() - pressAt > 300) stopTalk();   // held: release sends; a short tap keeps listening
    };
    b.addEventListener("pointerup", release);
    b.addEventListener("pointercancel", release);
    b.addEventListener("keydown", (e) => {
      if (e.key !== " " && e.key !== "Enter") return;
      e.preventDefault();
      if (e.repeat) return;
      if ($("mode").value === "free") { toggleHandsFree(); return; }
      startTalk();
    });
    b.addEventListener("keyup", (e) => {
      if (e.key !== " " && e.key !== "Enter") return;
      e.preventDefault();
      if ($("mode").value === "ptt") stopTalk();
    });
    b.addEventListener("click", (e) => {
      if ($("mode").value === "free" && e.detail !== 0) toggleHandsFree();
    });
    $("mode").addEventListener("change", () => {
      stopTalk();
      if (handsFree) toggleHandsFree();
      const free = $("mode").value === "free";
      $("talklabel").textContent = free ? "Start hands-free" : "Hold to talk";
      $("hint").textContent = free
        ? "Just talk: the server finds the end of each sentence. Talking over the answer interrupts it."
        : "Hold the button (or press Space on it) while you speak, release to send. Talking while the assistant answers interrupts it.";
    });
  }

  // ------------------------------------------------------------------ start-up
  function setup() {
    setupTalk();
    $("textform").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("text").value.trim();
      if (!text) return;
      ensureAudio();
      interrupt();
      // the words show at once; the turn's events (its own request_id) claim the bubble
      origin = { t: performance.now(), kind: "typing", user: bubble("user", text) };
      send({ type: "text", text });
      $("text").value = "";
    });
    $("keyform").addEventListener("submit", async (e) => {
      e.preventDefault();
      key = $("key").value.trim();
      try { localStorage.setItem(KEY_STORE, key); } catch (err) { /* storage disabled */ }
      if (await checkKey()) { notice(""); reconnect(); pollHealth(); }
    });
    $("reset").addEventListener("click", () => {
      // a new conversation: stop the answer, forget the history (server) and the log (here)
      flush("reset");
      send({ type: "reset" });
      $("log").replaceChildren();
      for (const t of turns.values()) { t.cancelled = true; t.user = null; t.bot = null; }  // late chunks stay silent
      origin = null; utterance = null;
    });
    $("language").addEventListener("change", reconnect);
    $("voice").addEventListener("change", reconnect);
    document.addEventListener("pointerdown", ensureAudio, { once: true });
  }

  async function main() {
    setup();
    pollHealth();
    if (await checkKey()) connect();
  }

  main();
})();
