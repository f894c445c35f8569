// lkmedia's room template (no bundler: livekit-client's UMD build defines LivekitClient).
// The egress protocol: join with ?url and ?token, render ?layout, console.log START_RECORDING
// once there is something to show and END_RECORDING when the room is gone, and follow the
// layout the egress participant's metadata names ({"layout": "speaker"}: UpdateLayout).
(function () {
  "use strict";
  const LK = window.LivekitClient;
  const { Room, RoomEvent, Track } = LK;
  const q = new URLSearchParams(location.search);
  const stage = document.getElementById("stage");
  const errorBox = document.querySelector("div.error");
  let layout = q.get("layout") || "grid";
  const tiles = new Map(); // track sid -> {track, participant, source, el}
  const audio = new Map(); // track sid -> audio element
  let started = false;
  let ended = false;
  const t0 = Date.now();

  // -- geometry: the same rules as lkmedia/nodes/layouts.py (LiveKit's default template) --
  const GRIDS = [[1, 1, 1, 0, ""], [1, 2, 2, 0, "portrait"], [2, 1, 2, 0, "landscape"], [2, 2, 4, 560, ""],
                 [3, 3, 9, 700, ""], [4, 4, 16, 960, ""], [5, 5, 25, 1100, ""]];
  function gridShape(n, w, h) {
    const o = h > w ? "portrait" : "landscape";
    const g = GRIDS.filter((x) => x[4] === "" || x[4] === o);
    let k = g.findIndex((x) => x[2] >= n);
    if (k < 0) k = g.length - 1;
    while (k > 0 && g[k][3] > w) k--;
    return [g[k][0], g[k][1]];
  }
  function cells(kind, n, w, h) {
    if (n === 0) return [];
    if (kind === "single-speaker" || (kind === "speaker" && n === 1)) {
      return [[0, 0, w, h]].concat(Array(n - 1).fill(null));
    }
    if (kind === "speaker") {
      const out = [];
      if (w >= 600) {
        const side = Math.floor(w / 6);
        let th = Math.floor(side / 1.6);
        const slots = Math.max(1, Math.round(h / th));
        if (slots * th > h) th = Math.floor(h / slots);
        out.push([side, 0, w - side, h]);
        for (let i = 1; i < n; i++) out.push(i - 1 < slots ? [0, (i - 1) * th, side, th] : null);
      } else {
        const side = Math.floor(h / 6);
        let tw = Math.floor(side * 1.6);
        const slots = Math.max(1, Math.round(w / tw));
        if (slots * tw > w) tw = Math.floor(w / slots);
        out.push([0, 0, w, h - side]);
        for (let i = 1; i < n; i++) out.push(i - 1 < slots ? [(i - 1) * tw, h - side, tw, side] : null);
      }
      return out;
    }
    const [cols, rows] = gridShape(n, w, h);
    const cw = Math.floor(w / cols), ch = Math.floor(h / rows);
    return Array.from({ length: n }, (_, i) => (i < cols * rows ? [(i % cols) * cw, Math.floor(i / cols) * ch, cw, ch] : null));
  }

  // -- order: screen shares, then speaking, then last spoken, then join time --
  function order(list) {
    return list.slice().sort((a, b) => {
      const sa = a.source === Track.Source.ScreenShare, sb = b.source === Track.Source.ScreenShare;
      if (sa !== sb) return sa ? -1 : 1;
      const pa = a.participant, pb = b.participant;
      if (pa.isSpeaking !== pb.isSpeaking) return pa.isSpeaking ? -1 : 1;
      if (pa.isSpeaking && pb.isSpeaking && pa.audioLevel !== pb.audioLevel) return pb.audioLevel - pa.audioLevel;
      const la = pa.lastSpokeAt ? pa.lastSpokeAt.getTime() : 0, lb = pb.lastSpokeAt ? pb.lastSpokeAt.getTime() : 0;
      if (la !== lb) return lb - la;
      const ja = pa.joinedAt ? pa.joinedAt.getTime() : 0, jb = pb.joinedAt ? pb.joinedAt.getTime() : 0;
      return ja - jb;
    });
  }

  function render() {
    const base = layout.replace(/-light$/, "");
    document.body.classList.toggle("light", layout.endsWith("-light"));
    const list = order([...tiles.values()]);
    let kind = base.startsWith("single-speaker") ? "single-speaker" : base.startsWith("speaker") ? "speaker" : "grid";
    if (kind === "grid" && list.some((t) => t.source === Track.Source.ScreenShare)) kind = "speaker";
    const w = window.innerWidth, h = window.innerHeight;
    const cs = cells(kind, list.length, w, h);
    list.forEach((t, i) => {
      const c = cs[i];
      if (!c) { t.el.style.display = "none"; return; }
      Object.assign(t.el.style, { display: "block", left: c[0] + "px", top: c[1] + "px", width: c[2] + "px", height: c[3] + "px" });
    });
  }

  function addTile(track, pub, participant) {
    const el = document.createElement("div");
    el.className = "tile";
    const video = track.attach();
    video.muted = true;
    el.appendChild(video);
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = participant.name || participant.identity;
    el.appendChild(name);
    stage.appendChild(el);
    tiles.set(pub.trackSid, { track, participant, source: pub.source, el, video });
    render();
  }

  function removeTile(sid) {
    const t = tiles.get(sid);
    if (!t) return;
    t.track.detach(t.video);
    t.el.remove();
    tiles.delete(sid);
    render();
  }

  function setLayoutFrom(metadata) {
    try {
      const m = JSON.parse(metadata || "{}");
      if (m && typeof m.layout === "string" && m.layout) { layout = m.layout; render(); }
    } catch (e) { /* not ours */ }
  }

  // -- start / end signals (the Go egress's template protocol) --
  function startRecording() { if (!started) { started = true; console.log("START_RECORDING"); } }
  function endRecording() { if (!ended) { ended = true; console.log("END_RECORDING"); } }
  function framesDecoded() {
    for (const t of tiles.values()) {
      const v = t.video;
      if (v.videoWidth > 0 && v.readyState >= 2) return true;
    }
    return false;
  }
  const poll = setInterval(() => {
    if (started) { clearInterval(poll); return; }
    const subscribed = tiles.size + audio.size > 0;
    const waited = Date.now() - t0;
    if (framesDecoded() || (tiles.size === 0 && subscribed && waited > 500) || (subscribed && waited > 5000)) {
      startRecording();
    }
  }, 100);

  const room = new Room({ adaptiveStream: false, dynacast: false });
  room
    .on(RoomEvent.TrackSubscribed, (track, pub, participant) => {
      if (track.kind === Track.Kind.Video) addTile(track, pub, participant);
      else if (track.kind === Track.Kind.Audio) {
        const el = track.attach();
        document.body.appendChild(el);
        audio.set(pub.trackSid, el);
      }
    })
    .on(RoomEvent.TrackUnsubscribed, (track, pub) => {
      if (track.kind === Track.Kind.Video) removeTile(pub.trackSid);
      else {
        const el = audio.get(pub.trackSid);
        if (el) { track.detach(el); el.remove(); audio.delete(pub.trackSid); }
      }
    })
    .on(RoomEvent.ActiveSpeakersChanged, render)
    .on(RoomEvent.ParticipantDisconnected, render)
    .on(RoomEvent.ParticipantMetadataChanged, (_prev, participant) => {
      if (participant === room.localParticipant) setLayoutFrom(participant.metadata);
    })
    .on(RoomEvent.Disconnected, endRecording);
  window.addEventListener("resize", render);

  const url = q.get("url"), token = q.get("token");
  if (!url || !token) {
    errorBox.textContent = "missing url or token in the page address";
    return;
  }
  room.connect(url, token, { autoSubscribe: true }).then(() => {
    setLayoutFrom(room.localParticipant.metadata);
    render();
  }).catch((e) => {
    errorBox.textContent = "could not join the room: " + (e && e.message ? e.message : e);
    console.error("lkmedia template: " + errorBox.textContent);
  });
  window.lkmediaRoom = room; // for tests and for debugging a template
})();
