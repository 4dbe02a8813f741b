// nanobard serve: the page over the JSON API (GET /api/models, POST /api/analyze, POST
// /api/generate). Plain JavaScript, no library, nothing fetched from elsewhere. Model output is
// only ever set as textContent, never parsed as HTML.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { models: [], panels: new Map(), at: null, limits: {} };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function show(s) {  // a token or character as a person can read it
  return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/^ /, "\u2423") || "\u2205";
}

function sampling() {
  return {
    temperature: Number($("#temperature").value),
    top_k: Number($("#top-k").value),
    top_p: Number($("#top-p").value),
    seed: Number($("#seed").value) || 0,
  };
}

function showSliders() {
  const s = sampling();
  $("#temperature-out").textContent = s.temperature === 0 ? "0 (greedy)" : s.temperature.toFixed(2);
  $("#top-k-out").textContent = s.top_k === 0 ? "off" : String(s.top_k);
  $("#top-p-out").textContent = s.top_p >= 1 ? "off" : s.top_p.toFixed(2);
}

async function postJSON(path, body, signal) {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body), signal });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

// ------------------------------------------------------------------------------------------
// one panel per model

function makePanel(m) {
  const node = $("#model-template").content.firstElementChild.cloneNode(true);
  node.dataset.id = m.id;
  $(".name", node).textContent = m.name;
  $(".meta", node).textContent = `${m.kind === "scratch" ? "from scratch" : "pretrained"} · ` +
    `${m.parameters.toLocaleString()} parameters · ${m.tokenizer} · context ${m.context} tokens · ` +
    `${m.layers} layers × ${m.heads} heads`;
  const panel = { m, node, seq: 0, head: [m.layers - 1, 0], off: new Set(), probe: null,
    thumbs: null, thumbsFor: null, hover: null };
  buildGrid(panel);
  $("#models").append(node);
  return panel;
}

function buildGrid(p) {
  const grid = $(".grid", p.node);
  const big = p.m.layers * p.m.heads > 64;
  grid.style.gridTemplateColumns = `auto repeat(${p.m.heads}, ${big ? 30 : 52}px)`;
  grid.append(el("span", "corner", ""));
  for (let h = 0; h < p.m.heads; h++) grid.append(el("span", "col", `H${h}`));
  for (let l = 0; l < p.m.layers; l++) {
    grid.append(el("span", "row", `L${l}`));
    for (let h = 0; h < p.m.heads; h++) {
      const cell = el("div", "cell");
      cell.dataset.layer = l;
      cell.dataset.head = h;
      const canvas = el("canvas");
      canvas.width = canvas.height = big ? 24 : 44;
      const off = el("button", "off", "off");
      off.type = "button";
      off.title = "switch this head off (mean-ablation) and see what changes";
      off.addEventListener("click", (ev) => {
        ev.stopPropagation();
        const key = `${l},${h}`;
        if (p.off.has(key)) p.off.delete(key); else p.off.add(key);
        cell.classList.toggle("ablated", p.off.has(key));
        analyze(p);
      });
      cell.title = headTitle(p, l, h);
      cell.addEventListener("click", () => { p.head = [l, h]; analyze(p); });
      cell.append(canvas, off);
      grid.append(cell);
    }
  }
}

function headTitle(p, l, h) {
  const s = p.m.head_scores;
  let t = `layer ${l}, head ${h}`;
  if (s) {
    t += `\nprevious-token score ${s.previous_token[l][h].toFixed(2)}` +
      `\ninduction score ${s.induction[l][h].toFixed(2)}`;
    const cost = s.ablation_bpc && s.ablation_bpc[l] ? s.ablation_bpc[l][h] : null;
    if (cost !== null && cost !== undefined) t += `\nablation cost in the study ${cost >= 0 ? "+" : ""}${cost.toFixed(3)} bits/char`;
  }
  return t;
}

// ------------------------------------------------------------------------------------------
// analysis

let timer = null;
function analyzeAll(delay = 200) {
  clearTimeout(timer);
  timer = setTimeout(() => state.panels.forEach((p) => analyze(p)), delay);
}

async function analyze(p) {
  const text = $("#text").value;
  const seq = ++p.seq;
  const error = $(".error", p.node);
  if (p.ctrl) p.ctrl.abort();  // the server drops an analysis nobody waits for
  p.ctrl = new AbortController();
  p.node.classList.toggle("empty", !text);
  if (!text) { p.node.classList.remove("busy"); return; }
  const chars = Array.from(text);  // code points, as the server counts characters
  const wantThumbs = p.thumbsFor !== text;
  const body = { model: p.m.id, text, top: 10, head: p.head, lens: true, dla: true,
    thumbnails: wantThumbs,
    ablate: [...p.off].map((k) => k.split(",").map(Number)), ...sampling() };
  delete body.seed;
  if (state.at !== null && state.at <= chars.length) body.at = state.at;
  p.node.classList.add("busy");
  try {
    const r = await postJSON("/api/analyze", body, p.ctrl.signal);
    if (seq !== p.seq) return;  // a newer request is on its way
    if (r.thumbnails) { p.thumbs = r.thumbnails; p.thumbsFor = text; }
    p.probe = r;
    p.chars = chars;
    error.hidden = true;
    render(p, chars);
  } catch (e) {
    if (seq !== p.seq || e.name === "AbortError") return;
    error.textContent = e.message;
    error.hidden = false;
  } finally {
    if (seq === p.seq) p.node.classList.remove("busy");
  }
}

function tokenOfChar(r, n) {  // character index -> token index (-1 before the model's window)
  const of = new Int32Array(n).fill(-1);
  r.spans.forEach(([s, e], i) => { for (let c = s; c < e; c++) of[c] = i; });
  return of;
}

function render(p, text) {  // text: the analysed text's characters (an array of code points)
  const r = p.probe;
  const of = tokenOfChar(r, text.length);
  p.of = of;
  renderSurprise(p, text, of);
  renderNext(p);
  renderGrid(p);
  renderAttention(p, text, of);
  renderLens(p);
}

function bitsColour(bitsPerChar) {  // 0 bits: white; 8 or more: deep red
  const x = Math.min(1, Math.max(0, bitsPerChar / 8));
  return `hsl(${10 - 10 * x}, ${40 + 50 * x}%, ${98 - 55 * x}%)`;
}

function charSpan(p, text, c, of) {
  const ch = text[c];
  const s = el("span", "ch", ch === "\n" ? "\u21b5" : ch);
  s.dataset.i = c;
  if (of[c] < 0) s.classList.add("cut");
  if (state.at !== null && c === state.at - 1) s.classList.add("at");
  const t = of[c];
  if (t >= 0 && c === p.probe.spans[t][0] && c > 0) s.classList.add("tok-start");
  return s;
}

function appendChar(box, s, ch) {
  box.append(s);
  if (ch === "\n") box.append(document.createElement("br"));
}

function renderSurprise(p, text, of) {
  const r = p.probe;
  const box = $(".surprise", p.node);
  box.replaceChildren();
  for (let c = 0; c < text.length; c++) {
    const s = charSpan(p, text, c, of);
    const t = of[c];
    if (t >= 0) {
      let bits = r.surprise_bits[t];
      // a character split over several byte tokens costs them all (the rest cover 0 characters)
      for (let u = t + 1; u < r.spans.length && r.spans[u][0] === r.spans[u][1]; u++) {
        if (bits !== null) bits += r.surprise_bits[u];
      }
      const [a, b] = r.spans[t];
      if (bits === null) s.classList.add("unscored");
      else s.style.background = bitsColour(bits / Math.max(1, b - a));
      s.title = `token ${t} ${JSON.stringify(r.tokens[t])}: ` +
        (bits === null ? "the first token is not predicted" : `${bits.toFixed(2)} bits`);
    }
    s.addEventListener("click", () => {
      state.at = state.at === c + 1 ? null : c + 1;
      analyzeAll(0);
    });
    appendChar(box, s, text[c]);
  }
  let line = r.bits_per_char === null ? "" :
    `${r.bits_per_char.toFixed(3)} bits/char over ${r.chars_scored} characters`;
  if (r.ablated && r.ablated.bits_per_char !== null && r.bits_per_char !== null) {
    const d = r.ablated.bits_per_char - r.bits_per_char;
    line += ` · ${r.ablated.heads.length} head(s) off: ${r.ablated.bits_per_char.toFixed(3)} ` +
      `(${d >= 0 ? "+" : ""}${d.toFixed(3)})`;
  }
  $(".bpc", p.node).textContent = line;
}

function renderNext(p) {
  const r = p.probe;
  const nx = r.next;
  const tail = p.chars.slice(Math.max(0, nx.after - 12), nx.after).join("");
  $(".after", p.node).textContent = `after “${show(tail)}”`;
  const ab = r.ablated ? r.ablated.clean_candidates : null;
  p.node.classList.toggle("has-ablation", !!ab);
  const rows = nx.candidates.map((c, i) => {
    const tr = el("tr");
    if (c.sampled > 0) tr.classList.add("kept");
    const bar = el("span", "bar");
    bar.style.width = `${Math.round(100 * c.prob)}%`;
    const sbar = el("span", "bar sampled");
    sbar.style.width = `${Math.round(100 * c.sampled)}%`;
    const prob = el("td", "p");
    prob.append(bar, el("span", "v", (100 * c.prob).toFixed(1) + "%"));
    const samp = el("td", "s");
    samp.append(sbar, el("span", "v", c.sampled > 0 ? (100 * c.sampled).toFixed(1) + "%" : "–"));
    const abl = el("td", "ab", ab ? (100 * ab[i]).toFixed(1) + "%" : "");
    tr.append(el("td", "tok", show(c.token)), prob, samp, abl);
    return tr;
  });
  $(".next tbody", p.node).replaceChildren(...rows);
  $(".dla", p.node).textContent = r.dla ? dlaLine(r.dla, nx.candidates[0].token) : "";
  $(".kept-info", p.node).textContent = `${nx.kept.toLocaleString()} of ${p.m.vocab_size.toLocaleString()} ` +
    `tokens can be sampled with these settings · entropy ${nx.entropy_bits.toFixed(2)} bits`;
}

function dlaLine(d, token) {  // what writes the top prediction straight into its logit
  let best = [-Infinity, 0, 0];
  d.heads.forEach((row, l) => row.forEach((v, h) => { if (v > best[0]) best = [v, l, h]; }));
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  const f = (v) => `${v >= 0 ? "+" : ""}${v.toFixed(2)}`;
  return `direct logit attribution of “${show(token)}” (logit ${d.logit.toFixed(2)}): embeddings ` +
    `${f(d.embed)} · heads ${f(sum(d.heads.map(sum)))} (most: ${best[1]}.${best[2]} ` +
    `${f(best[0])}) · MLPs ${f(sum(d.mlp))} · biases ${f(sum(d.attn_bias) + d.rest)}`;
}

function renderGrid(p) {
  const [L, H] = p.head;
  p.node.querySelectorAll(".cell").forEach((cell) => {
    const l = Number(cell.dataset.layer), h = Number(cell.dataset.head);
    cell.classList.toggle("sel", l === L && h === H);
    if (p.thumbs) drawThumb($("canvas", cell), p.thumbs[l][h]);
  });
  $(".head-label", p.node).textContent = `layer ${L}, head ${H}`;
  const s = p.m.head_scores;
  $(".head-info", p.node).textContent = s ?
    `previous-token score ${s.previous_token[L][H].toFixed(2)} · induction score ` +
    `${s.induction[L][H].toFixed(2)} (from the study)` : "hover a character below";
}

function drawThumb(canvas, m) {
  const ctx = canvas.getContext("2d");
  const g = m.length, w = canvas.width / g;
  let max = 1e-9;
  m.forEach((row) => row.forEach((v) => { if (v > max) max = v; }));
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < g; i++) for (let j = 0; j < g; j++) {
    ctx.fillStyle = `rgba(30, 80, 200, ${m[i][j] / max})`;
    ctx.fillRect(j * w, i * w, Math.ceil(w), Math.ceil(w));
  }
}

function renderAttention(p, text, of) {
  const box = $(".attention", p.node);
  box.replaceChildren();
  const spans = [];
  for (let c = 0; c < text.length; c++) {
    const s = charSpan(p, text, c, of);
    s.addEventListener("mouseenter", () => { p.hover = c; shadeAttention(p, spans); });
    s.addEventListener("click", () => { p.hover = c; shadeAttention(p, spans); });
    spans.push(s);
    appendChar(box, s, text[c]);
  }
  if (p.hover === null || p.hover >= text.length) p.hover = text.length - 1;
  shadeAttention(p, spans);
}

function shadeAttention(p, spans) {
  const w = p.probe.attention ? p.probe.attention.weights : null;
  const q = p.of[p.hover];
  spans.forEach((s, c) => {
    s.classList.toggle("query", p.of[c] === q);
    const k = p.of[c];
    const v = w && q >= 0 && k >= 0 && k <= q ? w[q][k] : 0;
    s.style.background = v > 0 ? `rgba(30, 80, 200, ${Math.min(1, v * 1.5)})` : "";
    s.style.color = v > 0.45 ? "white" : "";
  });
}

function renderLens(p) {
  const r = p.probe;
  if (!r.lens) return;
  const off = r.ablated && r.ablated.lens;
  const rows = r.lens.map((layer, i) => {
    const tr = el("tr");
    const name = layer.layer === 0 ? "embed" : layer.layer === p.m.layers ? `${layer.layer} (out)` : String(layer.layer);
    const preds = el("td");
    layer.tokens.forEach((t, j) => {
      preds.append(el("span", "pred", `${show(t)} ${(100 * layer.probs[j]).toFixed(0)}%`));
    });
    if (off) preds.append(el("span", "pred off", `off: ${show(off[i].tokens[0])}`));
    tr.append(el("td", "layer", name), preds);
    return tr;
  });
  $(".lens tbody", p.node).replaceChildren(...rows);
  $(".lens-after", p.node).textContent = `at the same position`;
}

// ------------------------------------------------------------------------------------------
// generation: one stream per model, stopped by closing its connection

let running = [];

async function generateAll() {
  stopAll();
  const prompt = $("#text").value;
  const body = { prompt, max_new_tokens: Number($("#max-new").value) || 200, ...sampling() };
  $("#stop").disabled = false;
  const mine = [...state.panels.values()].map((p) => streamInto(p, body));
  running = mine;
  await Promise.allSettled(mine.map((r) => r.done));
  if (running === mine) $("#stop").disabled = true;  // unless a newer run has started
}

function streamInto(p, body) {
  const ctrl = new AbortController();
  const out = $(".gen-out", p.node);
  const stats = $(".gen-stats", p.node);
  const run = (p.genRun || 0) + 1;
  p.genRun = run;
  out.replaceChildren(el("span", "prompt", body.prompt));
  const generated = el("span", "generated", "");
  out.append(generated);
  stats.textContent = "generating…";
  p.node.classList.add("generating");
  const done = (async () => {
    try {
      const r = await fetch("/api/generate", { method: "POST", signal: ctrl.signal,
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ...body, model: p.m.id }) });
      if (!r.ok) throw new Error((await r.json()).error);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const ev = parseEvent(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
          if (ev.event === "text") generated.textContent += ev.data.text;
          else if (ev.event === "done") stats.textContent =
            `${ev.data.tokens} tokens in ${ev.data.seconds.toFixed(2)} s (${ev.data.tokens_per_second} tokens/s)`;
          else if (ev.event === "error") throw new Error(ev.data.error);
        }
      }
    } catch (e) {
      if (p.genRun === run) stats.textContent = e.name === "AbortError" ? "stopped" : e.message;
    } finally {
      if (p.genRun === run) p.node.classList.remove("generating");
    }
  })();
  return { ctrl, done };
}

function parseEvent(chunk) {
  const ev = { event: "message", data: null };
  chunk.split("\n").forEach((line) => {
    if (line.startsWith("event: ")) ev.event = line.slice(7);
    else if (line.startsWith("data: ")) ev.data = JSON.parse(line.slice(6));
  });
  return ev;
}

function stopAll() {
  running.forEach((r) => r.ctrl.abort());
  running = [];
  $("#stop").disabled = true;
}

// ------------------------------------------------------------------------------------------

async function start() {
  showSliders();
  try {
    const r = await fetch("/api/models");
    const data = await r.json();
    state.models = data.models;
    state.limits = data.limits;
    state.text = data.text;
  } catch (e) {
    $("#status").textContent = `cannot reach the server: ${e.message}`;
    return;
  }
  const text = $("#text");
  text.maxLength = state.limits.max_chars;
  text.value = state.text;
  state.models.forEach((m) => state.panels.set(m.id, makePanel(m)));
  $("#status").textContent = `${state.models.length} model(s): ` +
    state.models.map((m) => m.name).join(" · ");
  text.addEventListener("input", () => {
    state.at = null;
    state.panels.forEach((p) => { p.hover = null; });
    analyzeAll();
  });
  ["#temperature", "#top-k", "#top-p"].forEach((id) => $(id).addEventListener("input", () => {
    showSliders();
    analyzeAll(60);
  }));
  $("#generate").addEventListener("click", generateAll);
  $("#stop").addEventListener("click", stopAll);
  analyzeAll(0);
}

document.addEventListener("DOMContentLoaded", start);
