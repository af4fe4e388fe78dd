// streamproxy live captions: microphone -> AudioWorklet (16 kHz linear16) -> /v1/listen, with
// automatic reconnection and session resumption.
//
// Resumption protocol (proxy_events=true): the first ProxyStatus names the session; every result
// carries proxy.seq. After a dropped socket the page reconnects with
//   resume=<session_id>&last_seq=<last seq seen>&audio_offset=<offset of the first byte it resends>
// and waits for ProxyStatus "resumed" (audio_bytes_received = N) before resending its held audio
// from audio_offset (the gateway skips what it has); the gateway re-sends results after last_seq.
// N may be EARLIER than what the page sent: an instance that took the session over from a dead one
// has the audio only up to the end of the last final the page has. So audio is held client-side
// from the end of the last final (at most HOLD_MAX_S), not only what the gateway has not
// acknowledged, and audio_offset is never beyond that end. If the gateway refuses the
// resume (unknown or expired session, error), the page starts a fresh session and resends the
// audio after the last final, so no word is lost at the seam.
"use strict";

(() => {
  const SR = 16000;
  const BPS = SR * 2; // bytes per second of linear16 mono
  const HOLD_MAX_S = 120; // audio held after the last final before giving up on resuming
  const LAT_WINDOW = 300; // results in the page's own latency figures
  const BASE_QUERY = "encoding=linear16&sample_rate=16000&interim_results=true&proxy_events=true";
  // Flux: turns instead of results; the same audio, resume and latency extensions.
  const FLUX_QUERY = "model=flux-general-en&encoding=linear16&sample_rate=16000&proxy_events=true";

  const $ = (id) => document.getElementById(id);

  /** Audio by stream byte offset: what was sent, or is waiting to be sent, on the current session. */
  class History {
    constructor() {
      this.chunks = []; // {off, data: Uint8Array}
      this.start = 0;
      this.end = 0;
    }
    push(data) {
      this.chunks.push({ off: this.end, data });
      this.end += data.byteLength;
    }
    trimBefore(off) {
      off = Math.min(off, this.end);
      while (this.chunks.length && this.chunks[0].off + this.chunks[0].data.byteLength <= off) {
        this.chunks.shift();
      }
      this.start = this.chunks.length ? this.chunks[0].off : this.end;
    }
    *from(off) {
      for (const c of this.chunks) {
        const cend = c.off + c.data.byteLength;
        if (cend <= off) continue;
        yield off > c.off ? c.data.subarray(off - c.off) : c.data;
      }
    }
    /** Keep [off, end) as the start of a new stream (offsets restart at 0). */
    rebase(off) {
      off = Math.max(this.start, Math.min(off, this.end));
      off -= off % 2;
      const kept = [...this.from(off)];
      this.chunks = [];
      this.start = this.end = 0;
      for (const d of kept) this.push(d);
    }
  }

  const st = {
    running: false,
    stopping: false,
    ws: null,
    ctx: null,
    media: null,
    node: null,
    sessionId: null,
    lastSeq: 0,
    history: new History(),
    sent: 0, // stream offset of the next byte to send
    live: false, // audio flows to the socket
    finalEnd: 0, // stream offset where the last final result ends
    attempt: 0,
    reconnects: 0,
    droppedAt: null,
    token: null, // {protocols, expires}
    authRefused: false,
    timer: null,
    statsTimer: null,
    lat: { interim: [], final: [] },
    finals: [], // the latest final results as received (for debugging and the browser test)
    flux: false, // this run uses Flux (/v2/listen)
    turns: [], // Flux: the EndOfTurn messages as received
  };
  window.streamproxyPage = st; // for debugging and the browser test

  // ------------------------------------------------------------------ UI helpers
  function log(text, cls) {
    const li = document.createElement("li");
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    if (cls) li.className = cls;
    const ol = $("log");
    ol.prepend(li);
    while (ol.children.length > 60) ol.lastChild.remove();
  }

  function setState(s, detail) {
    const el = $("state");
    el.dataset.state = s;
    el.textContent = detail ? `${s} · ${detail}` : s;
  }

  function pct(sorted, q) {
    if (!sorted.length) return null;
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }

  function fmtMs(v) {
    return v == null ? "–" : `${Math.round(v)} ms`;
  }

  function showClientLatency() {
    for (const kind of ["interim", "final"]) {
      const v = [...st.lat[kind]].sort((a, b) => a - b);
      $(`c-${kind}-p50`).textContent = fmtMs(pct(v, 0.5));
      $(`c-${kind}-p95`).textContent = fmtMs(pct(v, 0.95));
      $(`c-${kind}-n`).textContent = String(v.length);
    }
  }

  async function pollStats() {
    try {
      const r = await fetch("/v1/stats", { cache: "no-store" });
      if (!r.ok) return;
      const s = await r.json();
      const figs = s.recent && s.recent.window_s != null ? s.recent : s.latency;
      for (const kind of ["interim", "final", "first_word"]) {
        const f = figs[kind] || {};
        $(`g-${kind}-p50`).textContent = fmtMs(f.p50_ms);
        $(`g-${kind}-p95`).textContent = fmtMs(f.p95_ms);
        $(`g-${kind}-n`).textContent = String(f.count ?? 0);
      }
      $("g-window").textContent =
        figs === s.latency ? "all sessions since start" : `the last ${Math.round(s.recent.window_s)} s`;
      $("g-sessions").textContent = String(s.sessions_active);
    } catch (e) {
      /* the gateway may be restarting: the next poll will tell */
    }
  }

  /** The caller's stored transcripts (GET /v1/transcripts), newest first: a small list under the figures. */
  async function loadTranscripts() {
    const note = $("transcripts-note");
    try {
      const key = $("key").value.trim();
      const headers = key ? { Authorization: `Token ${key}` } : {};
      const r = await fetch("/v1/transcripts?limit=10", { cache: "no-store", headers });
      if (!r.ok) {
        const j = await r.json().catch(() => ({}));
        note.textContent = r.status === 401 ? "Enter your API key under Settings to see your transcripts." : j.err_msg || `HTTP ${r.status}`;
        return;
      }
      const j = await r.json();
      const ol = $("transcripts");
      ol.replaceChildren(
        ...j.transcripts.map((t) => {
          const li = document.createElement("li");
          li.dataset.id = t.request_id;
          const when = new Date(t.created).toLocaleString();
          const dur = t.duration == null ? "…" : `${t.duration.toFixed(1)} s`;
          const head = document.createElement("span");
          head.className = "small";
          head.textContent = `${when} · ${t.source} · ${dur}${t.status === "open" ? " · open" : ""} `;
          const text = document.createElement("span");
          text.textContent = t.preview || "(no words)";
          li.append(head, text);
          return li;
        }),
      );
      note.textContent = j.transcripts.length ? "" : "No stored transcripts yet.";
    } catch (e) {
      note.textContent = "Transcripts unavailable.";
    }
  }

  function showCounters() {
    $("session").textContent = st.sessionId || "–";
    $("seq").textContent = String(st.lastSeq);
    $("sent").textContent = (st.sent / BPS).toFixed(1);
    $("reconnects").textContent = String(st.reconnects);
  }

  // ------------------------------------------------------------------ results
  function onResults(msg) {
    const alt = (msg.channel && msg.channel.alternatives && msg.channel.alternatives[0]) || {};
    const text = (alt.transcript || "").trim();
    const latency = msg.proxy && msg.proxy.latency_ms;
    if (typeof latency === "number") {
      const arr = st.lat[msg.is_final ? "final" : "interim"];
      arr.push(latency);
      if (arr.length > LAT_WINDOW) arr.shift();
      showClientLatency();
    }
    if (msg.is_final) {
      st.finals.push(msg);
      if (st.finals.length > 500) st.finals.shift();
      const end = Math.round((msg.start + msg.duration) * SR) * 2;
      if (end > st.finalEnd) st.finalEnd = end;
      $("interim").textContent = "";
      if (text) {
        const span = document.createElement("span");
        span.className = "final";
        span.dataset.seq = String(msg.proxy ? msg.proxy.seq : "");
        span.textContent = text + " ";
        $("finals").append(span);
        $("placeholder").hidden = true;
      }
    } else {
      $("interim").textContent = text;
      if (text) $("placeholder").hidden = true;
    }
  }

  function onStatus(msg) {
    if (msg.session_id && !st.sessionId) {
      st.sessionId = msg.session_id;
      log(`session ${st.sessionId}`);
    }
    if (msg.state === "resumed") {
      const have = msg.audio_bytes_received;
      st.reconnects++;
      // Resent from audio_offset as announced (the gateway skips what it has): after a takeover
      // `have` is the end of our last final, possibly earlier than what we had sent.
      log(`resumed: gateway has ${(have / BPS).toFixed(2)} s; resending from ${(st.resumeFrom / BPS).toFixed(2)} s`);
      goLive(st.resumeFrom);
    } else if (msg.state === "reconnecting") {
      log(`upstream ${msg.reason || "lost"}: retrying in ${msg.retry_in_s ?? "?"} s (attempt ${msg.attempt})`);
    } else if (msg.state === "replaying") {
      log(`upstream replay of ${msg.replay_s ?? "?"} s`);
    } else if (msg.state === "degraded") {
      log(`degraded: ${msg.dropped_s ?? "?"} s of audio dropped`, "error");
    }
    const extra = msg.state === "connected" && msg.upstream ? msg.upstream : "";
    setState(msg.state, extra);
  }

  // ------------------------------------------------------------------ audio flow
  function onAudio(buf) {
    const data = new Uint8Array(buf);
    st.history.push(data);
    const ws = st.ws;
    if (st.live && ws && ws.readyState === WebSocket.OPEN) {
      ws.send(data);
      st.sent = st.history.end;
      // Audio before the last final is transcribed for good; what follows it, any instance that
      // resumes the session may ask for again (bounded: HOLD_MAX_S).
      st.history.trimBefore(Math.max(st.finalEnd, st.history.end - HOLD_MAX_S * BPS));
    } else if (st.history.end - st.history.start > HOLD_MAX_S * BPS) {
      st.history.trimBefore(st.history.end - HOLD_MAX_S * BPS);
      st.sessionId = null; // too much held: resuming is no longer possible; start afresh
    }
    showCounters();
  }

  function goLive(from) {
    const ws = st.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    for (const d of st.history.from(from)) ws.send(d);
    st.sent = st.history.end;
    st.live = true;
    st.attempt = 0;
    st.droppedAt = null;
  }

  // ------------------------------------------------------------------ connection
  async function credentials() {
    if (st.token && Date.now() < st.token.expires) return st.token.protocols;
    const key = $("key").value.trim();
    try {
      const headers = { "Content-Type": "application/json" };
      if (key) headers.Authorization = `Token ${key}`;
      const r = await fetch("/v1/auth/grant", { method: "POST", headers, body: "{}" });
      st.authRefused = r.status === 401; // credentials are required and none valid was given
      if (r.ok) {
        const j = await r.json();
        if (j.access_token) {
          if (!key && anonymousToken(j.access_token)) return null; // no credential needed: none to expire
          // Reused for reconnects while valid: a resume must present the credential the session was opened with.
          const ttl = Math.max(1, (j.expires_in || 30) - 2);
          st.token = { protocols: ["bearer", j.access_token], expires: Date.now() + ttl * 1000 };
          return st.token.protocols;
        }
      }
      // 404/405: no grant route; 401/403: auth off or this key cannot grant - connect without a token
    } catch (e) {
      /* network error: try the socket anyway */
    }
    return key ? ["token", key] : null;
  }

  /** True for a grant to an anonymous client (the gateway allows anonymous access): its JWT sub is "anon:…". */
  function anonymousToken(jwt) {
    try {
      const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return String(JSON.parse(atob(part + "===".slice((part.length + 3) % 4))).sub || "").startsWith("anon:");
    } catch (e) {
      return false;
    }
  }

  function query() {
    const extra = $("options").value.trim().replace(/^[?&]+/, "");
    const base = st.flux ? FLUX_QUERY : BASE_QUERY;
    return extra ? `${base}&${extra}` : base;
  }

  /** Flux turns: the turn so far is the live line (marked while the agent may answer: eager end
   * of turn), each EndOfTurn becomes a caption line of its own. */
  function onTurn(msg) {
    const text = (msg.transcript || "").trim();
    const interim = $("interim");
    if (msg.event === "EndOfTurn") {
      st.turns.push(msg);
      if (st.turns.length > 500) st.turns.shift();
      const end = Math.round(msg.audio_window_end * SR) * 2;
      if (end > st.finalEnd) st.finalEnd = end;
      const latency = msg.proxy && msg.proxy.latency_ms;
      if (typeof latency === "number") {
        st.lat.final.push(latency);
        if (st.lat.final.length > LAT_WINDOW) st.lat.final.shift();
        showClientLatency();
      }
      interim.textContent = "";
      interim.classList.remove("eager");
      if (text) {
        const span = document.createElement("span");
        span.className = "final turn";
        span.dataset.seq = String(msg.proxy ? msg.proxy.seq : "");
        span.dataset.turn = String(msg.turn_index);
        span.textContent = text;
        $("finals").append(span, document.createElement("br"));
        $("placeholder").hidden = true;
      }
    } else {
      if (msg.event === "EagerEndOfTurn") interim.classList.add("eager");
      else if (msg.event === "TurnResumed" || msg.event === "StartOfTurn") interim.classList.remove("eager");
      interim.textContent = text;
      if (text) $("placeholder").hidden = true;
    }
  }

  function freshSession() {
    // Resend what no final has covered yet: nothing lost at the seam, nothing final repeated.
    st.history.rebase(st.finalEnd);
    st.sessionId = null;
    st.lastSeq = 0;
    st.finalEnd = 0;
    st.sent = 0;
  }

  async function connect() {
    st.timer = null;
    if (!st.running) return;
    const resume = Boolean(st.sessionId);
    if (!resume) freshSession();
    const protocols = await credentials();
    if (!st.running) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    let url = `${proto}//${location.host}/${st.flux ? "v2" : "v1"}/listen?${query()}`;
    if (resume) {
      st.resumeFrom = st.history.start;
      url += `&resume=${encodeURIComponent(st.sessionId)}&last_seq=${st.lastSeq}&audio_offset=${st.resumeFrom}`;
    }
    setState(resume ? "reconnecting" : "connecting", resume ? "resuming" : "");
    let ws;
    try {
      ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    } catch (e) {
      log(`cannot open socket: ${e}`, "error");
      return scheduleReconnect();
    }
    ws.binaryType = "arraybuffer";
    st.ws = ws;
    st.live = false;
    const sock = { opened: false, refused: false, fatal: null };

    ws.onopen = () => {
      sock.opened = true;
      if (!resume) goLive(0); // a new session takes the audio at once; a resume waits for "resumed"
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      const seq = msg.proxy && msg.proxy.seq;
      if (typeof seq === "number") {
        if (seq <= st.lastSeq) return; // already shown
        st.lastSeq = seq;
      }
      if (msg.type === "ProxyStatus") onStatus(msg);
      else if (msg.type === "Results") onResults(msg);
      else if (msg.type === "TurnInfo") onTurn(msg);
      else if (msg.type === "Warning") log(`warning: ${msg.description}`);
      else if (msg.type === "Error") {
        log(`error: ${msg.description || msg.err_msg}`, "error");
        if (msg.err_code === "RESUME_FAILED") sock.refused = true;
        else sock.fatal = msg.description || msg.err_msg || "error";
      } else if (msg.type === "Metadata") {
        log(`stream closed: ${Number(msg.duration || 0).toFixed(1)} s transcribed`);
      }
      showCounters();
    };
    ws.onclose = (ev) => {
      if (st.ws !== ws) return;
      st.ws = null;
      st.live = false;
      if (!st.running || st.stopping) return finish();
      if (st.droppedAt == null) st.droppedAt = Date.now();
      if (ev.code === 4000) {
        log("this session was taken over by another connection", "error");
        return stop();
      }
      if (sock.refused) {
        log("the gateway refused to resume; starting a new session");
        st.sessionId = null;
      } else if (ev.code === 1008 && sock.fatal) {
        return fail(sock.fatal);
      } else if ([1000, 1011, 1012, 1013].includes(ev.code)) {
        log(`session ended by the gateway (${ev.code}${ev.reason ? " " + ev.reason : ""}); starting a new one`);
        st.sessionId = null;
      } else if (!sock.opened && st.authRefused) {
        log("not authorized: enter an API key under Settings", "error");
        return fail("the gateway needs a valid API key (Settings)");
      } else if (resume && !sock.opened) {
        // The handshake failed: a refusal (404 expired, 403 foreign) if the gateway is up, else a network problem.
        return probe().then((up) => {
          if (up) {
            log("resume refused by the gateway; starting a new session");
            st.sessionId = null;
          }
          scheduleReconnect();
        });
      } else {
        log(`connection lost (${ev.code}); reconnecting`);
      }
      scheduleReconnect();
    };
  }

  async function probe() {
    try {
      const r = await fetch("/healthz", { cache: "no-store" });
      return r.ok;
    } catch (e) {
      return false;
    }
  }

  function scheduleReconnect() {
    if (!st.running || st.timer) return;
    // Full-jitter exponential backoff: first retry within 250 ms, then up to 1, 2, 4 ... 10 s.
    const ceiling = st.attempt === 0 ? 250 : Math.min(10000, 1000 * 2 ** (st.attempt - 1));
    st.attempt++;
    const delay = Math.random() * ceiling;
    setState("reconnecting", `in ${(delay / 1000).toFixed(1)} s`);
    st.timer = setTimeout(connect, delay);
  }

  // ------------------------------------------------------------------ start / stop
  async function start() {
    if (st.running) return;
    st.flux = $("flux").checked;
    if (!window.isSecureContext || !navigator.mediaDevices) {
      setState("error", "the microphone needs https or localhost");
      return;
    }
    $("start").disabled = true;
    try {
      st.media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      st.ctx = new AudioContext();
      await st.ctx.audioWorklet.addModule("/static/worklet.js");
      const source = st.ctx.createMediaStreamSource(st.media);
      st.node = new AudioWorkletNode(st.ctx, "capture-16k", { numberOfInputs: 1, numberOfOutputs: 1 });
      st.node.port.onmessage = (ev) => onAudio(ev.data);
      source.connect(st.node);
      st.node.connect(st.ctx.destination); // the processor writes silence; connected so it is pulled
      if (st.ctx.state === "suspended") await st.ctx.resume();
      log(`microphone at ${st.ctx.sampleRate} Hz, sent as 16 kHz linear16`);
    } catch (e) {
      setState("error", `microphone: ${e.message || e}`);
      $("start").disabled = false;
      return;
    }
    st.running = true;
    st.stopping = false;
    st.history = new History();
    st.sessionId = null;
    $("stop").disabled = false;
    connect();
    pollStats();
    st.statsTimer = setInterval(pollStats, 2000);
  }

  function stop() {
    if (!st.running) return;
    st.stopping = true;
    $("stop").disabled = true;
    if (st.timer) clearTimeout(st.timer);
    st.timer = null;
    stopCapture();
    const ws = st.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      setState("closing");
      ws.send(JSON.stringify({ type: "CloseStream" })); // the gateway delivers the last results, then closes
      setTimeout(() => ws.readyState !== WebSocket.CLOSED && ws.close(), 15000);
    } else {
      finish();
    }
  }

  function fail(message) {
    stop();
    setState("error", message); // after stop(), which shows "idle" or "closing"
  }

  function stopCapture() {
    if (st.node) st.node.port.onmessage = null;
    if (st.media) st.media.getTracks().forEach((t) => t.stop());
    if (st.ctx) st.ctx.close();
    st.node = st.media = st.ctx = null;
  }

  function finish() {
    stopCapture();
    st.running = false;
    st.stopping = false;
    st.ws = null;
    if (st.statsTimer) clearInterval(st.statsTimer);
    st.statsTimer = null;
    pollStats();
    setTimeout(loadTranscripts, 1500); // the session's end is written by the gateway within a moment
    setState("idle");
    $("start").disabled = false;
    $("stop").disabled = true;
  }

  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("refresh-transcripts").addEventListener("click", loadTranscripts);
  pollStats();
  loadTranscripts();
})();
