// ringkv status page: polls /admin/v1/cluster every second (and the ring's tokens when its digest changes),
// draws the ring, the members and one card per node. Plain DOM, no framework, no build step, nothing inline
// (the page's Content-Security-Policy admits only this file).
"use strict";

const POLL_MS = 1000;
const STALE_AFTER_MS = 5000;        // no answer for this long: the banner says so
const FRESH_S = 600;                // a range verified within this many seconds counts as fresh
const PALETTE = ["#1f6fb4", "#c2410c", "#15803d", "#7e22ce", "#a16207", "#0e7490", "#be185d", "#4d7c0f",
                 "#475569", "#b91c1c", "#4338ca", "#0f766e"];
const TWO64 = 18446744073709551616;
const R = 90;                       // ring radius in the SVG's user units

const state = {
  cluster: null, tokens: null, ringDigest: null, key: null, keyInfo: null,
  lastOk: 0, lastError: null, colours: new Map(),
};

// ---- small DOM helpers ------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value; else node.setAttribute(name, String(value));
  }
  return node;
}

function swatch(nodeId) {
  const s = el("span", {class: "swatch", "aria-hidden": "true"});
  s.style.background = colour(nodeId);
  return s;
}

function colour(nodeId) {
  if (!state.colours.has(nodeId)) {
    const i = state.colours.size;
    state.colours.set(nodeId, i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137) % 360} 70% 34%)`);
  }
  return state.colours.get(nodeId);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "never";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function pill(kind, text) { return el("span", {class: `pill ${kind}`, text}); }

// ---- data -------------------------------------------------------------------------------------------------

async function getJSON(path) {
  const response = await fetch(path, {credentials: "same-origin", cache: "no-store",
                                      headers: {Accept: "application/json"}});
  if (response.status === 401) { window.location.assign("/ui/login"); throw new Error("signed out"); }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.message ? body.message : `HTTP ${response.status}`;
    const error = new Error(message);
    error.code = body && body.error;
    throw error;
  }
  return body;
}

async function poll() {
  try {
    const cluster = await getJSON("/admin/v1/cluster");
    state.cluster = cluster;
    state.lastOk = Date.now();
    state.lastError = null;
    for (const m of cluster.members) colour(m.node_id);
    if (cluster.ring.digest !== state.ringDigest) {
      const ring = await getJSON("/admin/v1/ring?tokens=1");
      state.tokens = ring.tokens || [];
      state.ringDigest = cluster.ring.digest;
      if (state.key !== null) await lookUp(state.key, false);
    }
  } catch (error) {
    state.lastError = error.message || String(error);
  }
  render();
  window.setTimeout(poll, POLL_MS);
}

async function lookUp(key, announce) {
  const result = document.getElementById("key-result");
  try {
    const ring = await getJSON(`/admin/v1/ring?key=${encodeURIComponent(key)}`);
    state.key = key;
    state.keyInfo = ring.key;
  } catch (error) {
    state.key = null;
    state.keyInfo = null;
    result.replaceChildren(`Could not look the key up: ${error.message}`);
    return;
  }
  if (announce) renderRing();
  renderKey();
}

// ---- rendering --------------------------------------------------------------------------------------------

function memberState(member, answer) {
  if (!member.up) return {kind: "down", text: "down"};
  if (answer && answer.error) return {kind: "warn", text: "no answer"};
  return {kind: "up", text: "up"};
}

function render() {
  const c = state.cluster;
  renderBanners();
  if (!c) return;
  document.getElementById("cluster-name").textContent = `cluster ${c.cluster_name}`;
  document.getElementById("served-by").textContent = `as seen by ${c.node_id}`;
  document.getElementById("updated").textContent =
    `updated ${new Date(state.lastOk).toLocaleTimeString()}`;
  renderRing();
  renderKey();
  renderMembers();
  renderNodes();
}

function renderBanners() {
  const banners = [];
  const c = state.cluster;
  const add = (kind, title, text) => banners.push(el("p", {class: `banner ${kind}`}, el("strong", {text: title}), text));
  if (state.lastError !== null && (!c || Date.now() - state.lastOk > STALE_AFTER_MS)) {
    add("error", "No answer.", `${window.location.host} does not answer (${state.lastError})` +
        (c ? `; what follows is from ${new Date(state.lastOk).toLocaleTimeString()}.` : "."));
  }
  if (c) {
    const q = c.quorum;
    if (q.writes_unavailable) {
      add("error", "Quorum lost.", `${c.node_id} sees fewer than W=${q.write_quorum} members up: no write can ` +
          "succeed, and reads of most keys fail.");
    } else if (q.reads_unavailable > 0) {
      add("error", "Quorum lost.", `${q.reads_unavailable} of ${q.ranges} token ranges have fewer than ` +
          `R=${q.read_quorum} replicas up as ${c.node_id} sees them: reads of their keys fail; writes go to ` +
          "stand-ins as hints.");
    } else if (q.writes_on_stand_ins > 0) {
      add("warn", "Replicas down.", `${q.writes_on_stand_ins} of ${q.ranges} token ranges have fewer than ` +
          `W=${q.write_quorum} replicas up: their writes are held as hints by stand-ins until the replicas return.`);
    } else if (q.under_replicated > 0) {
      const down = c.members.filter((m) => !m.up && m.status !== "left").map((m) => m.node_id);
      add("warn", "Replicas down.", `${down.length ? down.join(", ") + " down: " : ""}${q.under_replicated} of ` +
          `${q.ranges} token ranges have fewer replicas up than they should. Requests at R=${q.read_quorum} ` +
          `W=${q.write_quorum} still succeed; writes for the missing replicas are kept as hints.`);
    }
    if (!c.ring.agreed) {
      const views = Object.entries(c.ring.views).map(([n, v]) => `${n} ${String(v).slice(0, 8)}`).join(", ");
      add("warn", "Ring disagreement.", `The members do not share one view of the ring (${views}): a topology ` +
          "change is settling, or gossip does not reach everyone.");
    }
    const self = c.nodes[c.node_id];
    if (self && self.mode !== "normal") {
      add("warn", `${c.node_id} is ${self.mode}.`, self.ready ? "" : "It does not serve client requests now.");
    }
  }
  document.getElementById("banners").replaceChildren(...banners);
}

function angle(token) {          // 0 at the top, clockwise, in radians
  return ((token / TWO64) + 0.5) * 2 * Math.PI;
}

function point(a, r) { return [r * Math.sin(a), -r * Math.cos(a)]; }

function arcPath(a0, a1, r) {
  if (a1 - a0 >= 2 * Math.PI - 1e-9) {        // a single range: the whole circle
    const [x0, y0] = point(0, r), [x1, y1] = point(Math.PI, r);
    return `M ${x0} ${y0} A ${r} ${r} 0 1 1 ${x1} ${y1} A ${r} ${r} 0 1 1 ${x0} ${y0}`;
  }
  const [x0, y0] = point(a0, r), [x1, y1] = point(a1, r);
  return `M ${x0.toFixed(2)} ${y0.toFixed(2)} A ${r} ${r} 0 ${a1 - a0 > Math.PI ? 1 : 0} 1 ${x1.toFixed(2)} ${y1.toFixed(2)}`;
}

function renderRing() {
  const c = state.cluster, tokens = state.tokens;
  const ring = document.getElementById("ring");
  const desc = ring.querySelector("desc");
  const parts = [desc];
  const up = new Map(c.members.map((m) => [m.node_id, m.up]));
  const replicas = state.keyInfo ? new Set(state.keyInfo.preference_list) : null;
  if (tokens && tokens.length) {
    for (let i = 0; i < tokens.length; i += 1) {
      const [token, owner] = tokens[i];
      const previous = tokens[(i + tokens.length - 1) % tokens.length][0];
      let a0 = angle(previous), a1 = angle(token);
      if (tokens.length === 1) { a0 = 0; a1 = 2 * Math.PI; } else if (a1 <= a0) a1 += 2 * Math.PI;
      const path = svg("path", {d: arcPath(a0, a1 - 0.004, R), stroke: colour(owner),
                                class: `arc${replicas && !replicas.has(owner) ? " dim" : ""}`, "data-owner": owner});
      if (up.get(owner) === false) path.setAttribute("stroke-dasharray", "3 3");
      path.append(svg("title", {text: `${owner}: (${previous}, ${token}]`}));
      parts.push(path);
    }
  }
  const live = c.members.filter((m) => m.up && m.status !== "left").length;
  parts.push(svg("text", {x: 0, y: -4, class: "center", text: `${c.members.filter((m) => m.status !== "left").length} members`}));
  parts.push(svg("text", {x: 0, y: 14, class: "hole-label", text: `${live} up · RF ${c.ring.replication_factor}`}));
  parts.push(svg("text", {x: 0, y: 30, class: "hole-label",
                          text: `R=${c.ring.read_quorum} W=${c.ring.write_quorum}`}));
  if (state.keyInfo) {
    const a = angle(state.keyInfo.token);
    const [x0, y0] = point(a, R - 16), [x1, y1] = point(a, R + 16);
    parts.push(svg("line", {x1: x0, y1: y0, x2: x1, y2: y1, class: "key-mark"}));
  }
  ring.replaceChildren(...parts);
  const primary = primaryShare(tokens || []);
  const legend = c.members.filter((m) => m.status !== "left").map((m) => el("li", {"data-node": m.node_id},
    swatch(m.node_id), `${m.node_id} ${((primary.get(m.node_id) || 0) * 100).toFixed(1)}%`, m.up ? "" : " (down)"));
  document.getElementById("legend").replaceChildren(...legend);
  const summary = document.getElementById("ring-summary");
  summary.textContent = tokens ? `${tokens.length} token ranges · ring ${String(c.ring.digest).slice(0, 12)}` : "";
}

function primaryShare(tokens) {   // node -> fraction of the token space whose ranges it owns (the arcs)
  const share = new Map();
  for (let i = 0; i < tokens.length; i += 1) {
    const [token, owner] = tokens[i];
    const previous = tokens[(i + tokens.length - 1) % tokens.length][0];
    const width = tokens.length === 1 ? TWO64 : ((token - previous) % TWO64 + TWO64) % TWO64;
    share.set(owner, (share.get(owner) || 0) + width / TWO64);
  }
  return share;
}

function renderKey() {
  const result = document.getElementById("key-result");
  const info = state.keyInfo;
  if (!info) { if (state.key === null && !result.textContent.startsWith("Could")) result.replaceChildren(); return; }
  const members = new Map((state.cluster ? state.cluster.members : []).map((m) => [m.node_id, m]));
  const items = info.preference_list.map((n, i) => el("span", {class: "replica", "data-node": n},
    i ? ", " : "", swatch(n), " ", n, members.get(n) && !members.get(n).up ? " (down)" : ""));
  result.replaceChildren(el("strong", {text: state.key}), ` → token ${info.token} → replicas `, ...items);
}

function renderMembers() {
  const c = state.cluster;
  const rows = c.members.map((m) => {
    const s = memberState(m, c.nodes[m.node_id]);
    const view = m.view === null || m.view === undefined ? "–"
      : (m.view === c.ring.views[c.node_id] ? "agrees" : `differs (${String(m.view).slice(0, 8)})`);
    return el("tr", {"data-node": m.node_id, "data-state": s.kind, class: s.kind === "down" ? "down" : ""},
      el("td", {}, swatch(m.node_id), " ", m.node_id, m.local ? el("span", {class: "muted", text: " (this node)"}) : ""),
      el("td", {}, pill(s.kind, s.text)),
      el("td", {text: m.status}),
      el("td", {class: "num", text: m.phi === null || m.phi === undefined ? "–" : m.phi.toFixed(1)}),
      el("td", {text: `${m.datacenter} / ${m.rack}`}),
      el("td", {class: "num", text: m.tokens}),
      el("td", {class: "num", text: `${(m.ownership * 100).toFixed(1)}%`}),
      el("td", {text: view}));
  });
  document.querySelector("#members tbody").replaceChildren(...rows);
}

function progress(label, ratio, detail) {
  const id = `p-${Math.random().toString(36).slice(2, 10)}`;
  const bar = el("progress", {id, max: 1, "aria-label": label});
  if (ratio !== null && ratio !== undefined) bar.value = ratio;
  return el("div", {class: "op"}, el("label", {for: id},
    label, ratio === null || ratio === undefined ? "" : ` ${Math.round(ratio * 100)}%`, detail ? ` · ${detail}` : ""), bar);
}

function verifiedBar(ranges) {
  let fresh = 0, stale = 0, never = 0;
  for (const r of ranges) {
    if (r.verified_s_ago === null) never += 1; else if (r.verified_s_ago <= FRESH_S) fresh += 1; else stale += 1;
  }
  const total = Math.max(1, ranges.length);
  const bar = el("div", {class: "verified", role: "img",
                         "aria-label": `${fresh} ranges verified in the last ${FRESH_S / 60} min, ${stale} earlier, ${never} never`});
  for (const [cls, n] of [["fresh", fresh], ["stale", stale], ["never", never]]) {
    if (!n) continue;
    const part = el("span", {class: cls, title: `${n} ${cls}`});
    part.style.width = `${(100 * n) / total}%`;
    bar.append(part);
  }
  return [el("span", {text: `${fresh}/${ranges.length} ranges verified < ${FRESH_S / 60} min`}), bar];
}

function requestsText(r) {
  if (!r) return "–";
  return `${r.rate_per_s.toFixed(1)}/s · p99 ${r.p99_ms === null ? "–" : `${r.p99_ms} ms`}`;
}

function renderNodes() {
  const c = state.cluster;
  const cards = c.members.filter((m) => m.status !== "left").map((m) => {
    const answer = c.nodes[m.node_id] || {};
    const s = memberState(m, answer);
    const card = el("article", {class: `node ${s.kind}`, "data-node": m.node_id, "data-state": s.kind,
                                "aria-label": `node ${m.node_id}, ${s.text}`});
    card.style.borderLeftColor = colour(m.node_id);
    card.append(el("h3", {}, m.node_id, pill(s.kind, s.text),
                   answer.mode && answer.mode !== "normal" ? pill("warn", answer.mode) : ""));
    if (answer.error) {
      card.append(el("p", {class: "muted", text: m.up ? `No status answer (${answer.error}).`
                                                        : `Down for ${c.node_id}'s failure detector; no status answer.`}));
      return card;
    }
    const aae = answer.antientropy;
    const dl = el("dl", {},
      el("dt", {text: "Reads"}), el("dd", {text: requestsText(answer.requests && answer.requests.read)}),
      el("dt", {text: "Writes"}), el("dd", {text: requestsText(answer.requests && answer.requests.write)}),
      el("dt", {text: "Hints"}), el("dd", {text: answer.hints ? `${answer.hints.pending} pending` +
        (answer.hints.pending ? ` (${Object.entries(answer.hints.targets).map(([t, n]) => `${t}: ${n}`).join(", ")})` : "")
        : "–"}),
      el("dt", {text: "Anti-entropy"}), el("dd", {}, aae ? (!aae.enabled ? "off" : !aae.ranges.length
        ? "no ranges to verify yet"
        : [el("span", {text: `least recently verified range: ${seconds(aae.oldest_unverified_s)} ago · ` +
                                `${aae.keys_repaired} keys repaired`}),
           el("br"), ...verifiedBar(aae.ranges)]) : "not started"),
      el("dt", {text: "Storage"}), el("dd", {text: answer.storage
        ? `${answer.storage.sstables} SSTables · ${bytes(answer.storage.sstable_bytes)} · memtable ${bytes(answer.storage.memtable_bytes)}`
        : "–"}));
    card.append(dl);
    const ops = el("div", {class: "ops"});
    if (answer.streaming) {
      const st = answer.streaming;
      ops.append(progress(answer.mode === "joining" ? "Joining: streaming ranges" : "Streamed ranges", st.ratio,
                          `${st.done}/${st.ranges} ranges · ${st.keys} keys · ${bytes(st.bytes)}` +
                          (st.failed ? ` · ${st.failed} failed` : "")));
    }
    for (const op of answer.operations || []) {
      const p = op.progress || {};
      const detail = p.ranges_total ? `${p.ranges_done || 0}/${p.ranges_total} ranges` : `${seconds(op.elapsed_s)}`;
      ops.append(progress(op.kind.charAt(0).toUpperCase() + op.kind.slice(1), op.ratio, detail));
    }
    if (ops.childElementCount) card.append(ops);
    return card;
  });
  document.getElementById("nodes").replaceChildren(...cards);
}

// ---- start ------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("key-input").value;
    if (key) lookUp(key, true);
  });
  poll();
});
