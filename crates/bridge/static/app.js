// kaskade demo page: joins a room over the signaling WebSocket (proto/signaling.md), publishes
// the camera and microphone on a publisher PeerConnection (we offer) and receives everyone else
// on a subscriber PeerConnection (the bridge offers).
//
// For tests and debugging the page exposes `window.kaskade`:
//   state          "idle" | "joining" | "joined" | "left" | "error"
//   participantId  our participant id once joined
//   participants   remote participants: id -> {name, bridge, tracks: [{id, kind}]}
//   chat           chat lines: [{from, name, text, self}]
//   dominantSpeaker  participant id of the conference's dominant speaker (or null)
//   stage          participant id on the stage (the large tile): the last remote dominant speaker
//   bridge         id of the bridge we are on (null until joined)
//   migrations     times a draining bridge moved us to another one (`migrate`)
//   bridges        number of bridges in the conference: distinct `bridge` of us and the others
//   lastError      {code, reason, fatal} of the last error (the bridge's or the page's own)
//   stats()        async: per remote participant id, {name, video, audio} inbound stats
//   publisherStats()  async: our outbound video per rid: {rid: {frameHeight, framesEncoded,
//                  bytesSent, qualityLimitationReason}}
//   constraints    the last video_constraints sent: {tracks: {track id: max height}}
//   setMaxHeight(participantId, h)  pin the height asked for a participant's video (null:
//                  back to the layout's choice: 720 on the stage, 180 for thumbnails)
//   join(room, name), leave(), sendMessage(text)
//
// URL parameters: room, name, token, autojoin=1, cam=0 / mic=0 (join without them),
// simulcast=0.
//
// Video is published as rid simulcast (q/h/f: a quarter, half and full resolution of the
// camera, from 720p); `?simulcast=0` publishes one encoding.
(function () {
  "use strict";

  var PING_INTERVAL_MS = 20000;
  var params = new URLSearchParams(window.location.search);
  var urlToken = params.get("token") || null;
  var $ = function (id) { return document.getElementById(id); };

  var kaskade = {
    state: "idle",
    participantId: null,
    migrations: 0,
    participants: {},
    lastError: null,
    room: null,
    events: [],
    chat: [],
    dominantSpeaker: null,
    bridge: null,
    bridges: 0,
    join: join,
    leave: leave,
    stats: stats,
    sendMessage: sendMessage,
    constraints: null,
    setMaxHeight: setMaxHeight,
    publisherStats: publisherStats,
  };
  // Heights pinned with setMaxHeight, by participant id.
  var pinnedHeights = {};
  var STAGE_HEIGHT = 720;
  var THUMBNAIL_HEIGHT = 180;
  var SIMULCAST = params.get("simulcast") !== "0";
  window.kaskade = kaskade;

  var session = null;

  // ------------------------------------------------------------------------------------------
  // UI helpers

  function setState(state, text) {
    kaskade.state = state;
    var el = $("status");
    el.dataset.state = state;
    el.textContent = text || {
      idle: "not connected",
      joining: "joining…",
      joined: "connected",
      left: "left the room",
      error: "disconnected",
    }[state];
    var inCall = state === "joining" || state === "joined";
    $("join-panel").hidden = inCall;
    $("call").hidden = !inCall;
    $("leave-btn").hidden = !inCall;
    $("join-btn").disabled = inCall;
    $("room-label").hidden = !inCall;
    $("bridge-count").hidden = !inCall || kaskade.bridges < 1;
  }

  // the conference spans as many bridges as distinct `bridge` ids among us and the others
  function updateBridgeCount() {
    var ids = {};
    if (kaskade.bridge) ids[kaskade.bridge] = true;
    Object.keys(kaskade.participants).forEach(function (pid) {
      var b = kaskade.participants[pid].bridge;
      if (b) ids[b] = true;
    });
    var n = Object.keys(ids).length;
    kaskade.bridges = n;
    var el = $("bridge-count");
    el.textContent = n + (n === 1 ? " bridge" : " bridges");
    el.title = Object.keys(ids).sort().join(", ");
    el.hidden = !(kaskade.state === "joining" || kaskade.state === "joined") || n < 1;
  }

  function showError(code, reason, fatal) {
    kaskade.lastError = { code: code, reason: reason || "", fatal: fatal !== false };
    $("error-code").textContent = code;
    $("error-reason").textContent = reason || "";
    $("error-box").hidden = false;
    $("error-box").dataset.fatal = String(fatal !== false);
  }

  function clearError() {
    $("error-box").hidden = true;
  }

  function initials(name) {
    var parts = String(name || "?").trim().split(/\s+/);
    return ((parts[0] || "?")[0] + (parts.length > 1 ? parts[parts.length - 1][0] : "")).toUpperCase();
  }

  function updateAloneNote() {
    $("alone-note").hidden = Object.keys(kaskade.participants).length > 0;
  }

  function tileId(pid) {
    return "tile-" + pid.replace(/[^A-Za-z0-9_-]/g, "_");
  }

  function ensureTile(pid) {
    var el = document.getElementById(tileId(pid));
    if (el) return el;
    el = document.createElement("figure");
    el.className = "tile remote";
    el.id = tileId(pid);
    el.dataset.participantId = pid;
    var avatar = document.createElement("div");
    avatar.className = "avatar";
    var video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    var cap = document.createElement("figcaption");
    var name = document.createElement("span");
    name.className = "name";
    cap.appendChild(name);
    var bridge = document.createElement("span");
    bridge.className = "bridge";
    cap.appendChild(bridge);
    el.appendChild(video);
    el.appendChild(avatar);
    el.appendChild(cap);
    $("grid").appendChild(el);
    renameTile(pid);
    return el;
  }

  function renameTile(pid) {
    var el = document.getElementById(tileId(pid));
    if (!el) return;
    var p = kaskade.participants[pid];
    var name = (p && p.name) || "participant";
    el.querySelector(".name").textContent = name;
    // Which bridge of the cascade this participant is connected to.
    el.querySelector(".bridge").textContent = (p && p.bridge) ? " · " + p.bridge : "";
    el.querySelector(".avatar").textContent = initials(name);
  }

  function removeTile(pid) {
    var el = document.getElementById(tileId(pid));
    if (!el) return;
    var v = el.querySelector("video");
    if (v) v.srcObject = null;
    el.remove();
  }

  function refreshTileVideo(pid, stream) {
    var el = ensureTile(pid);
    var video = el.querySelector("video");
    if (stream && video.srcObject !== stream) {
      video.srcObject = stream;
    }
    var s = video.srcObject;
    var hasVideo = !!s && s.getVideoTracks().some(function (t) { return t.readyState === "live"; });
    el.classList.toggle("has-video", hasVideo);
    var p = video.play();
    if (p && p.catch) p.catch(function () { /* autoplay refused: the user can click */ });
  }

  function showPcStates() {
    if (!session) return;
    var st = function (pc) { return pc ? pc.connectionState : "–"; };
    $("pc-state").textContent = "publisher: " + st(session.pub) + " · subscriber: " + st(session.sub);
  }

  // ------------------------------------------------------------------------------------------
  // tokens and media

  function tokenClaims(token) {
    try {
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      return JSON.parse(decodeURIComponent(escape(atob(part))));
    } catch (e) {
      return null;
    }
  }

  function PageError(code, reason) {
    this.code = code;
    this.message = reason;
  }

  function randomId() {
    var a = new Uint8Array(6);
    crypto.getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  async function getToken(room, name) {
    if (urlToken) return urlToken;
    var slug = (name || "guest").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);
    var identity = (slug || "guest") + "-" + randomId();
    var q = new URLSearchParams({ room: room, identity: identity, name: name || "" });
    var r;
    try {
      r = await fetch("/api/dev-token?" + q.toString(), { cache: "no-store" });
    } catch (e) {
      throw new PageError("connection_failed", "cannot reach the bridge: " + e.message);
    }
    if (!r.ok) {
      throw new PageError(
        "no_token",
        "this bridge is not in dev mode: open the page with ?token=<access token> (mint one with `kaskade token`)"
      );
    }
    var body = await r.json();
    if (!body || typeof body.token !== "string") throw new PageError("no_token", "dev-token endpoint gave no token");
    return body.token;
  }

  async function getLocalMedia(wantVideo, wantAudio) {
    if (!wantVideo && !wantAudio) return new MediaStream();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("no_media", "camera and microphone need https or localhost; joining as a viewer", false);
      return new MediaStream();
    }
    // 720p: browsers send all three simulcast layers only from about that size.
    var video = wantVideo ? { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } } : false;
    var attempts = [{ video: video, audio: wantAudio }];
    if (wantVideo && wantAudio) attempts.push({ video: false, audio: true }, { video: video, audio: false });
    var lastErr = null;
    for (var i = 0; i < attempts.length; i++) {
      try {
        return await navigator.mediaDevices.getUserMedia(attempts[i]);
      } catch (e) {
        lastErr = e;
      }
    }
    showError("no_media", "no camera or microphone (" + (lastErr && lastErr.name) + "); joining as a viewer", false);
    return new MediaStream();
  }

  // The room rides in the URL so that a load balancer can route a room's signaling to one
  // bridge (docker/haproxy.cfg hashes on it); the bridge itself reads it from `join`.
  function wsUrl(room) {
    return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host +
      "/ws?room=" + encodeURIComponent(room);
  }

  // ------------------------------------------------------------------------------------------
  // the session

  async function join(room, name) {
    if (session) return;
    room = String(room || "").trim();
    name = String(name || "").trim();
    clearError();
    kaskade.lastError = null;
    kaskade.participants = {};
    kaskade.participantId = null;
    kaskade.room = room;
    kaskade.chat = [];
    kaskade.dominantSpeaker = null;
    kaskade.bridge = null;
    updateBridgeCount();
    $("chat-log").innerHTML = "";
    var s = {
      ws: null,
      pub: null,
      sub: null,
      localStream: null,
      trackOwner: new Map(), // remote track id -> participant id
      streams: new Map(), // participant id -> MediaStream
      subChain: Promise.resolve(),
      ready: { publisher: false, subscriber: false },
      queued: { publisher: [], subscriber: [] },
      pingTimer: null,
      closed: false,
    };
    session = s;
    $("room-label").innerHTML = "";
    $("room-label").appendChild(document.createTextNode("room "));
    var b = document.createElement("b");
    b.textContent = room;
    $("room-label").appendChild(b);
    $("local-name").textContent = name || "You";
    setState("joining");
    updateAloneNote();
    try {
      var token = await getToken(room, name);
      if (s.closed) return;
      s.localStream = await getLocalMedia($("cam-check").checked, $("mic-check").checked);
      if (s.closed) { stopStream(s.localStream); return; }
      $("local-video").srcObject = s.localStream;
      $("tile-local").classList.toggle("has-video", s.localStream.getVideoTracks().length > 0);
      openSocket(s, room, name, token);
    } catch (e) {
      fail(s, e.code || "internal", e.message || String(e));
    }
  }

  // `url` and `redirected` are set when following a bridge's `redirect` (proto/signaling.md,
  // Redirects): the same join, on the bridge that selection chose.
  function openSocket(s, room, name, token, url, redirected) {
    var ws = new WebSocket(url || wsUrl(room));
    s.ws = ws;
    s.room = room;
    s.name = name;
    ws.onopen = function () {
      var msg = { type: "join", room: room, token: token };
      if (name) msg.name = name.slice(0, 64);
      if (redirected) msg.redirected = true;
      // ?region= names the client's region for bridge selection (else the load balancer's
      // header decides, else the bridge's own region).
      if (params.get("region")) msg.region = params.get("region").slice(0, 64);
      send(s, msg);
    };
    ws.onmessage = function (ev) {
      if (typeof ev.data !== "string") return;
      var msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      kaskade.events.push(msg.type);
      if (kaskade.events.length > 500) kaskade.events.shift();
      handle(s, msg).catch(function (e) {
        console.error("kaskade: handling", msg.type, e);
        fail(s, "internal", "page error while handling " + msg.type + ": " + (e.message || e));
      });
    };
    ws.onclose = function (ev) {
      if (s.closed || s.ws !== ws) return;
      fail(s, "connection_closed", "signaling connection closed (code " + ev.code + (ev.reason ? ": " + ev.reason : "") + ")");
    };
  }

  function send(s, msg) {
    if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify(msg));
  }

  async function handle(s, msg) {
    if (s.closed) return;
    switch (msg.type) {
      case "joined":
        kaskade.participantId = msg.participant.id;
        kaskade.bridge = msg.participant.bridge || (msg.bridge && msg.bridge.id) || null;
        (msg.participants || []).forEach(addParticipant);
        setState("joined");
        updateBridgeCount();
        sendConstraints();
        s.pingTimer = setInterval(function () { send(s, { type: "ping" }); }, PING_INTERVAL_MS);
        if (s.localStream.getTracks().length > 0) await startPublishing(s);
        break;
      case "answer":
        if (msg.target === "publisher" && s.pub) {
          await s.pub.setRemoteDescription({ type: "answer", sdp: msg.sdp });
        }
        break;
      case "offer":
        if (msg.target === "subscriber") {
          // offers are answered strictly in order
          s.subChain = s.subChain.then(function () { return answerSubscriber(s, msg.sdp); });
          await s.subChain;
        }
        break;
      case "participant_joined":
        addParticipant(msg.participant);
        break;
      case "participant_left":
        delete kaskade.participants[msg.participant_id];
        s.streams.delete(msg.participant_id);
        removeTile(msg.participant_id);
        updateAloneNote();
        updateBridgeCount();
        break;
      case "track_published": {
        var p = kaskade.participants[msg.participant_id];
        if (p && !p.tracks.some(function (t) { return t.id === msg.track.id; })) p.tracks.push(msg.track);
        sendConstraints();
        break;
      }
      case "track_unpublished": {
        var q = kaskade.participants[msg.participant_id];
        if (q) q.tracks = q.tracks.filter(function (t) { return t.id !== msg.track_id; });
        var stream = s.streams.get(msg.participant_id);
        if (stream) refreshTileVideo(msg.participant_id, stream);
        break;
      }
      case "track_muted": {
        // An administrator muted or unmuted a track: the bridge stops or resumes it.
        var mp = kaskade.participants[msg.participant_id];
        if (mp) mp.tracks.forEach(function (t) { if (t.id === msg.track_id) t.muted = msg.muted; });
        break;
      }
      case "message":
        // our own lines are shown when sent; ignore an echo, if the bridge sends one
        if (msg.from !== kaskade.participantId) addChat(msg.from, msg.name, msg.text, false);
        break;
      case "dominant_speaker":
        setDominantSpeaker(msg.participant_id);
        break;
      case "pong":
        s.lastPong = Date.now();
        break;
      case "redirect": {
        // Selection placed us on another bridge: follow once, quietly; the old socket closes.
        var old = s.ws;
        kaskade.redirectedTo = msg.bridge;
        openSocket(s, s.room, s.name, msg.token, msg.url, true);
        if (old) old.close();
        break;
      }
      case "migrate":
        migrate(s, msg);
        break;
      case "error":
        if (msg.fatal) {
          fail(s, msg.code, msg.reason);
        } else {
          console.warn("kaskade: non-fatal error", msg.code, msg.reason);
          showError(msg.code, msg.reason, false);
        }
        break;
      default:
        console.warn("kaskade: unknown message", msg.type);
    }
  }

  function setDominantSpeaker(pid) {
    kaskade.dominantSpeaker = pid || null;
    document.querySelectorAll(".tile.speaking").forEach(function (el) { el.classList.remove("speaking"); });
    if (!pid) return;
    var el = pid === kaskade.participantId ? $("tile-local") : document.getElementById(tileId(pid));
    if (el) el.classList.add("speaking");
    // The stage (the large tile) shows the dominant speaker, unless that is us: then whoever
    // was on stage stays there.
    if (pid !== kaskade.participantId && el) {
      document.querySelectorAll(".tile.stage").forEach(function (t) { t.classList.remove("stage"); });
      el.classList.add("stage");
      kaskade.stage = pid;
    }
    sendConstraints();
  }

  // ------------------------------------------------------------------------------------------
  // video constraints: the stage tile gets the large layer, thumbnails the small one

  function setMaxHeight(pid, h) {
    if (h === null || h === undefined) delete pinnedHeights[pid];
    else pinnedHeights[pid] = Math.max(0, Math.min(4320, Math.round(Number(h) || 0)));
    sendConstraints();
  }

  function sendConstraints() {
    var s = session;
    if (!s || kaskade.state !== "joined") return;
    var tracks = {};
    Object.keys(kaskade.participants).forEach(function (pid) {
      var h = pid in pinnedHeights ? pinnedHeights[pid] : (pid === kaskade.stage ? STAGE_HEIGHT : THUMBNAIL_HEIGHT);
      (kaskade.participants[pid].tracks || []).forEach(function (t) {
        if (t.kind === "video") tracks[t.id] = h;
      });
    });
    var msg = { type: "video_constraints", tracks: tracks };
    var key = JSON.stringify(msg);
    if (key === s.lastConstraints) return;
    s.lastConstraints = key;
    kaskade.constraints = { tracks: tracks };
    send(s, msg);
  }

  function addParticipant(p) {
    kaskade.participants[p.id] = { name: p.name || "", bridge: p.bridge || "", tracks: (p.tracks || []).slice() };
    ensureTile(p.id);
    renameTile(p.id);
    updateAloneNote();
    updateBridgeCount();
    sendConstraints();
  }

  function candidateMessage(target, c) {
    var cand = null;
    if (c && c.candidate) {
      cand = { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex };
      if (c.usernameFragment) cand.usernameFragment = c.usernameFragment;
    }
    return { type: "candidate", target: target, candidate: cand };
  }

  function trickle(s, target, c) {
    var msg = candidateMessage(target, c);
    if (s.ready[target]) send(s, msg);
    else s.queued[target].push(msg);
  }

  function markReady(s, target) {
    s.ready[target] = true;
    var q = s.queued[target];
    s.queued[target] = [];
    q.forEach(function (m) { send(s, m); });
  }

  function newPc(s) {
    var pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    pc.onconnectionstatechange = showPcStates;
    return pc;
  }

  async function startPublishing(s) {
    var pc = newPc(s);
    s.pub = pc;
    pc.onicecandidate = function (e) { trickle(s, "publisher", e.candidate); };
    s.localStream.getTracks().forEach(function (track) {
      var init = { direction: "sendonly", streams: [s.localStream] };
      if (track.kind === "video" && SIMULCAST) {
        // Lowest first: the bridge ranks layers in this order (proto/signaling.md).
        init.sendEncodings = [
          { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
          { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
          { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1500000 },
        ];
      }
      pc.addTransceiver(track, init);
    });
    var offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    send(s, { type: "offer", target: "publisher", sdp: pc.localDescription.sdp });
    markReady(s, "publisher");
    showPcStates();
  }

  function ensureSubscriber(s) {
    if (s.sub) return s.sub;
    var pc = newPc(s);
    s.sub = pc;
    pc.onicecandidate = function (e) { trickle(s, "subscriber", e.candidate); };
    pc.ontrack = function (e) {
      var stream = e.streams && e.streams[0];
      if (!stream) return;
      var pid = stream.id;
      s.trackOwner.set(e.track.id, pid);
      s.streams.set(pid, stream);
      if (!kaskade.participants[pid]) {
        // media before the participant_joined event: show it anyway
        kaskade.participants[pid] = { name: "", tracks: [] };
        updateAloneNote();
      }
      refreshTileVideo(pid, stream);
      var refresh = function () { if (s.streams.get(pid) === stream) refreshTileVideo(pid, stream); };
      stream.onremovetrack = refresh;
      e.track.onended = refresh;
      e.track.onunmute = refresh;
    };
    return pc;
  }

  async function answerSubscriber(s, sdp) {
    if (s.closed) return;
    var pc = ensureSubscriber(s);
    await pc.setRemoteDescription({ type: "offer", sdp: sdp });
    var answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    send(s, { type: "answer", target: "subscriber", sdp: pc.localDescription.sdp });
    markReady(s, "subscriber");
    showPcStates();
  }

  // Our bridge drains and moves us (proto/signaling.md, Drain and migration): leave it, drop
  // both PeerConnections and the remote tiles, and join the named bridge with the same camera
  // and microphone. The page stays "joined" throughout; media resumes once the new legs connect.
  function migrate(s, msg) {
    var old = s.ws;
    send(s, { type: "leave" });
    if (s.pingTimer) clearInterval(s.pingTimer);
    s.pingTimer = null;
    [s.pub, s.sub].forEach(function (pc) {
      if (pc) {
        try { pc.close(); } catch (e) { /* already closed */ }
      }
    });
    s.pub = null;
    s.sub = null;
    s.ready = { publisher: false, subscriber: false };
    s.queued = { publisher: [], subscriber: [] };
    s.subChain = Promise.resolve();
    s.trackOwner.clear();
    s.streams.clear();
    Object.keys(kaskade.participants).forEach(removeTile);
    kaskade.participants = {};
    kaskade.migrations = (kaskade.migrations || 0) + 1;
    openSocket(s, s.room, s.name, msg.token, msg.url, true);
    if (old) old.close();
  }

  function stopStream(stream) {
    if (stream) stream.getTracks().forEach(function (t) { t.stop(); });
  }

  function teardown(s, state) {
    if (s.closed) return;
    s.closed = true;
    if (s.pingTimer) clearInterval(s.pingTimer);
    [s.pub, s.sub].forEach(function (pc) {
      if (pc) {
        try { pc.close(); } catch (e) { /* already closed */ }
      }
    });
    stopStream(s.localStream);
    if (s.ws && s.ws.readyState <= WebSocket.OPEN) {
      try { s.ws.close(1000, "bye"); } catch (e) { /* ignore */ }
    }
    Object.keys(kaskade.participants).forEach(removeTile);
    document.querySelectorAll(".tile.remote").forEach(function (el) { el.remove(); });
    $("local-video").srcObject = null;
    kaskade.participants = {};
    kaskade.bridge = null;
    updateBridgeCount();
    if (session === s) session = null;
    setState(state);
    $("pc-state").textContent = "publisher: – · subscriber: –";
  }

  function fail(s, code, reason) {
    if (s.closed) return;
    showError(code, reason, true);
    teardown(s, "error");
  }

  function leave() {
    var s = session;
    if (!s) return;
    send(s, { type: "leave" });
    teardown(s, "left");
  }

  // ------------------------------------------------------------------------------------------
  // chat

  function addChat(from, name, text, self) {
    kaskade.chat.push({ from: from, name: name, text: text, self: self });
    var li = document.createElement("li");
    if (self) li.className = "self";
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = self ? "You" : (name || "participant");
    li.appendChild(who);
    li.appendChild(document.createTextNode(text));
    var log = $("chat-log");
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
  }

  function sendMessage(text) {
    var s = session;
    // at most 1000 characters (code points, never half a surrogate pair)
    text = Array.from(String(text || "").trim()).slice(0, 1000).join("");
    if (!s || kaskade.state !== "joined" || !text) return false;
    send(s, { type: "message", text: text });
    addChat(kaskade.participantId, $("name-input").value, text, true);
    return true;
  }

  // ------------------------------------------------------------------------------------------
  // stats for tests and diagnostics

  async function stats() {
    var out = {};
    var s = session;
    if (!s || !s.sub) return out;
    var byMid = new Map();
    s.sub.getTransceivers().forEach(function (t) {
      var pid = t.receiver && t.receiver.track && s.trackOwner.get(t.receiver.track.id);
      if (t.mid != null && pid) byMid.set(t.mid, pid);
    });
    var report = await s.sub.getStats();
    report.forEach(function (r) {
      if (r.type !== "inbound-rtp") return;
      var pid = (r.trackIdentifier && s.trackOwner.get(r.trackIdentifier)) || (r.mid != null && byMid.get(r.mid));
      if (!pid) return;
      var entry = out[pid];
      if (!entry) {
        var p = kaskade.participants[pid];
        entry = out[pid] = { name: p ? p.name : "", video: null, audio: null };
      }
      if (r.kind === "video") {
        var v = {
          framesDecoded: r.framesDecoded || 0,
          frameWidth: r.frameWidth || 0,
          frameHeight: r.frameHeight || 0,
          packetsLost: r.packetsLost || 0,
          nackCount: r.nackCount || 0,
          freezeCount: r.freezeCount || 0,
          totalFreezesDuration: r.totalFreezesDuration || 0,
          packetsReceived: r.packetsReceived || 0,
          jitterBufferDelay: r.jitterBufferDelay || 0,
          jitterBufferEmittedCount: r.jitterBufferEmittedCount || 0,
        };
        if (!entry.video || v.framesDecoded >= entry.video.framesDecoded) entry.video = v;
      } else if (r.kind === "audio") {
        var a = {
          packetsReceived: r.packetsReceived || 0,
          totalSamplesReceived: r.totalSamplesReceived || 0,
          audioLevel: r.audioLevel || 0,
        };
        if (!entry.audio || a.packetsReceived >= entry.audio.packetsReceived) entry.audio = a;
      }
    });
    return out;
  }

  async function publisherStats() {
    var out = {};
    var s = session;
    if (!s || !s.pub) return out;
    var report = await s.pub.getStats();
    report.forEach(function (r) {
      if (r.type !== "outbound-rtp" || r.kind !== "video") return;
      out[r.rid || ""] = {
        frameHeight: r.frameHeight || 0,
        framesEncoded: r.framesEncoded || 0,
        bytesSent: r.bytesSent || 0,
        qualityLimitationReason: r.qualityLimitationReason || "",
      };
    });
    return out;
  }

  // ------------------------------------------------------------------------------------------
  // wiring

  function init() {
    var claims = urlToken ? tokenClaims(urlToken) : null;
    var room = params.get("room") || (claims && claims.room) || "";
    var name = params.get("name") || (claims && claims.name) || "";
    $("room-input").value = room;
    $("name-input").value = name;
    if (urlToken) {
      $("token-note").hidden = false;
      if (claims && claims.room) $("room-input").readOnly = true;
    }
    $("join-form").addEventListener("submit", function (e) {
      e.preventDefault();
      join($("room-input").value, $("name-input").value);
    });
    $("leave-btn").addEventListener("click", leave);
    $("chat-form").addEventListener("submit", function (e) {
      e.preventDefault();
      if (sendMessage($("chat-input").value)) $("chat-input").value = "";
    });
    $("error-close").addEventListener("click", clearError);
    window.addEventListener("pagehide", function () {
      if (session) send(session, { type: "leave" });
    });
    setState("idle");
    // ?cam=0 / ?mic=0: join without camera / microphone (a viewer).
    if (params.get("cam") === "0") $("cam-check").checked = false;
    if (params.get("mic") === "0") $("mic-check").checked = false;
    if (params.get("autojoin") === "1" && room) join(room, name);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
