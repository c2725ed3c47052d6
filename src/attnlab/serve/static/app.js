// attnlab web page: translate a sentence and explore its cross-attention; caption an image and
// step through the words with their attention drawn over the image. Plain JS, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

// ---- small helpers ------------------------------------------------------------------------------

async function callApi(path, options = {}) {
  let response;
  const key = $("api-key").value.trim();
  const headers = { ...(options.headers || {}), ...(key ? { Authorization: `Bearer ${key}` } : {}) };
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new Error(`the server did not answer (${err.message})`);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const message = body && (body.error || (typeof body.detail === "string" && body.detail));
    throw new Error(message || `HTTP ${response.status}`);
  }
  return body;
}

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function fillSelect(select, options, value) {
  select.replaceChildren(...options.map(([v, label]) => new Option(label, String(v))));
  select.value = String(value);
}

// A subword as shown on the page: the "▁" word-start marker becomes a small prefix glyph.
function tokenElement(tag, token) {
  const el = document.createElement(tag);
  const start = token.startsWith("▁");
  el.textContent = start ? token.slice(1) : token;
  if (start) el.classList.add("word-start");
  return el;
}

function heat(w) {  // weight in [0, 1] -> background colour (white -> deep blue)
  const t = Math.max(0, Math.min(1, w));
  const r = Math.round(255 - t * (255 - 20));
  const g = Math.round(255 - t * (255 - 60));
  const b = Math.round(255 - t * (255 - 160));
  return `rgb(${r}, ${g}, ${b})`;
}

// IEEE half precision -> number
function fromFloat16(bits) {
  const sign = bits & 0x8000 ? -1 : 1, exponent = (bits >> 10) & 0x1f, fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// the answer's weights (nested lists, or base64 little-endian float16 of `shape`) -> [layer][head][t][s]
function decodeWeights(att) {
  if (att.weights) return att.weights;
  const bytes = Uint8Array.from(atob(att.weights_f16), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  const [L, H, T, S] = att.shape;
  let k = 0;
  const next = () => fromFloat16(view.getUint16(2 * k++, true));
  return Array.from({ length: L }, () => Array.from({ length: H }, () =>
    Array.from({ length: T }, () => Array.from({ length: S }, next))));
}

// ---- translation and the heatmap ------------------------------------------------------------------

const state = { attention: null };

// weights[layer][head][t][s] -> (T x S) for a layer index or "mean" and a head index or "mean"
function selectMatrix(att, layer, head) {
  const layers = layer === "mean" ? att.weights : [att.weights[Number(layer)]];
  const T = att.target_tokens.length, S = att.source_tokens.length;
  const out = Array.from({ length: T }, () => new Array(S).fill(0));
  let n = 0;
  for (const heads of layers) {
    for (const m of head === "mean" ? heads : [heads[Number(head)]]) {
      n += 1;
      for (let t = 0; t < T; t++) for (let s = 0; s < S; s++) out[t][s] += m[t][s];
    }
  }
  return out.map((row) => row.map((v) => v / n));
}

function renderHeatmap() {
  const att = state.attention;
  const table = $("heatmap");
  const strip = $("source-strip");
  if (!att) { table.replaceChildren(); strip.replaceChildren(); return; }
  const matrix = selectMatrix(att, $("layer").value, $("head").value);

  const head = document.createElement("thead");
  const headRow = document.createElement("tr");
  const corner = document.createElement("th");
  corner.innerHTML = '<span class="sr-only">output token \\ source token</span>';
  headRow.append(corner);
  att.source_tokens.forEach((tok) => {
    const th = tokenElement("th", tok);
    th.scope = "col";
    headRow.append(th);
  });
  head.append(headRow);

  const body = document.createElement("tbody");
  matrix.forEach((row, t) => {
    const tr = document.createElement("tr");
    tr.dataset.row = String(t);
    const th = tokenElement("th", att.target_tokens[t]);
    th.scope = "row";
    th.tabIndex = 0;
    th.className += " target-token";
    tr.append(th);
    row.forEach((w, s) => {
      const td = document.createElement("td");
      td.style.background = heat(w);
      td.title = `${att.target_tokens[t]} → ${att.source_tokens[s]}: ${w.toFixed(3)}`;
      td.dataset.weight = w.toFixed(4);
      const sr = document.createElement("span");
      sr.className = "sr-only";
      sr.textContent = w.toFixed(2);
      td.append(sr);
      tr.append(td);
    });
    const activate = () => highlight(t, matrix);
    tr.addEventListener("mouseenter", activate);
    th.addEventListener("focus", activate);
    body.append(tr);
  });
  table.onmouseleave = () => highlight(null, matrix);
  table.replaceChildren(head, body);

  strip.replaceChildren(...att.source_tokens.map((tok, s) => {
    const chip = tokenElement("span", tok);
    chip.classList.add("chip");
    chip.dataset.col = String(s);
    return chip;
  }));
  highlight(null, matrix);
}

// Highlight output token t (or none): its row, and the source tokens shaded by its weights.
function highlight(t, matrix) {
  const att = state.attention;
  document.querySelectorAll("#heatmap tbody tr").forEach((tr) => {
    tr.classList.toggle("active", t !== null && tr.dataset.row === String(t));
  });
  const strongest = t === null ? -1 : matrix[t].indexOf(Math.max(...matrix[t]));
  document.querySelectorAll("#heatmap thead th").forEach((th, i) => {
    th.classList.toggle("source-active", i - 1 === strongest);
  });
  document.querySelectorAll("#source-strip .chip").forEach((chip, s) => {
    chip.style.background = t === null ? "" : heat(matrix[t][s]);
    chip.style.color = t !== null && matrix[t][s] > 0.55 ? "white" : "";
    chip.title = t === null ? "" : `weight ${matrix[t][s].toFixed(3)}`;
  });
  $("strip-label").textContent = t === null
    ? "Source (hover an output token):"
    : `Where “${att.target_tokens[t].replace(/^▁/, "")}” looks in the source:`;
}

async function translate(event) {
  event.preventDefault();
  const text = $("source").value;
  const button = $("translate-button");
  button.disabled = true;
  setStatus($("translate-status"), "Translating…");
  try {
    const data = await callApi("/translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text, beam: Number($("beam").value), attention: { format: "f16" } }),
    });
    $("translation").textContent = data.translations[0] || "(empty)";
    const att = data.attention && data.attention[0];
    state.attention = att;
    if (att) {
      att.weights = decodeWeights(att);
      const layers = [...Array(att.layers).keys()].map((i) => [i, `${i + 1} of ${att.layers}`]);
      const heads = [...Array(att.heads).keys()].map((i) => [i, `${i + 1} of ${att.heads}`]);
      fillSelect($("layer"), [...layers, ["mean", "mean of layers"]], att.layers - 1);
      fillSelect($("head"), [...heads, ["mean", "mean of heads"]], "mean");
    }
    renderHeatmap();
    $("translate-result").hidden = false;
    const note = data.truncated.length ? " (the input was cut to the model's length limit)" : "";
    setStatus($("translate-status"), `Done in ${Math.round(data.elapsed_ms)} ms${note}.`);
  } catch (err) {
    setStatus($("translate-status"), `Error: ${err.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// ---- captioning ---------------------------------------------------------------------------------

const caption = { result: null, image: null, word: 0 };

function drawCaptionStep() {
  const { result, image, word } = caption;
  const canvas = $("caption-canvas");
  if (!result || !image) return;
  const scale = Math.min(1, 560 / image.naturalWidth);
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const [rows, cols] = result.grid;
  const weights = result.attention[word] || [];
  const peak = Math.max(...weights, 1e-9);
  // dim each region by how little the word attends to it, on a small canvas scaled up smoothly
  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const sctx = small.getContext("2d");
  const pixels = sctx.createImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    pixels.data[4 * i + 3] = Math.round(200 * (1 - (weights[i] || 0) / peak));
  }
  sctx.putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);

  const words = result.words;
  $("word-label").textContent = `word ${word + 1} of ${words.length}: “${words[word]}”`;
  document.querySelectorAll("#caption-words button").forEach((b, i) => {
    b.setAttribute("aria-pressed", String(i === word));
  });
  $("prev-word").disabled = word === 0;
  $("next-word").disabled = word >= words.length - 1;
  canvas.setAttribute("aria-label", `the image, shaded by the attention of “${words[word]}”`);
}

function stepTo(i) {
  if (!caption.result) return;
  caption.word = Math.max(0, Math.min(caption.result.words.length - 1, i));
  drawCaptionStep();
}

async function captionImage(event) {
  event.preventDefault();
  const file = $("image").files[0];
  if (!file) { setStatus($("caption-status"), "Choose an image first.", true); return; }
  const form = new FormData();
  form.append("image", file);
  form.append("beam", $("caption-beam").value);
  const button = $("caption-button");
  button.disabled = true;
  setStatus($("caption-status"), "Captioning…");
  try {
    const data = await callApi("/caption", { method: "POST", body: form });
    const image = new Image();
    await new Promise((resolve, reject) => {
      image.onload = resolve;
      image.onerror = () => reject(new Error("the browser cannot display this image"));
      image.src = URL.createObjectURL(file);
    });
    Object.assign(caption, { result: data, image, word: 0 });
    $("caption").textContent = data.caption;
    $("caption-words").replaceChildren(...data.words.map((w, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = w;
      b.addEventListener("click", () => stepTo(i));
      return b;
    }));
    $("caption-result").hidden = false;
    drawCaptionStep();
    setStatus($("caption-status"), `Done in ${Math.round(data.elapsed_ms)} ms. Step through the words to see where the model looked.`);
  } catch (err) {
    setStatus($("caption-status"), `Error: ${err.message}`, true);
  } finally {
    button.disabled = false;
  }
}

// ---- start ----------------------------------------------------------------------------------------

async function init() {
  $("translate-form").addEventListener("submit", translate);
  $("layer").addEventListener("change", renderHeatmap);
  $("head").addEventListener("change", renderHeatmap);
  $("caption-form").addEventListener("submit", captionImage);
  $("prev-word").addEventListener("click", () => stepTo(caption.word - 1));
  $("next-word").addEventListener("click", () => stepTo(caption.word + 1));
  $("caption-result").addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") stepTo(caption.word - 1);
    if (e.key === "ArrowRight") stepTo(caption.word + 1);
  });
  try {
    const health = await callApi("/health");
    const m = health.model;
    const size = m.config && m.config.d_model ? `, d_model ${m.config.d_model}, ${m.config.n_layers} layers, ${m.config.n_heads} heads` : "";
    const vocab = m.vocab ? `, vocabulary ${m.vocab.src}/${m.vocab.tgt}` : "";
    $("model-info").textContent = `Model: ${m.arch}${m.task ? ` (${m.task})` : ""}${size}${vocab}.`;
    const beams = [...Array(Math.min(health.limits.max_beam, 8)).keys()].map((i) => [i + 1, i === 0 ? "1 (greedy)" : String(i + 1)]);
    fillSelect($("beam"), beams, 1);
    fillSelect($("caption-beam"), beams, 1);
    $("source").maxLength = health.limits.max_chars;
    $("key-row").hidden = !health.api_key_required;
    $("translate-section").hidden = !health.capabilities.translate;
    $("caption-section").hidden = !health.capabilities.caption;
    document.body.dataset.ready = "true";
  } catch (err) {
    $("model-info").textContent = `Could not reach the model: ${err.message}`;
  }
}

document.addEventListener("DOMContentLoaded", init);
