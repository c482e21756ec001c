// mmsparse search page: plain JavaScript, no build step, no external resources.
// The state lives in the URL (?q=...|like=ID|image=UPLOAD_ID, mode, k, terms, w1, w2, force),
// so a result page (an edited query included) can be shared and the back button works.
"use strict";

const $ = (id) => document.getElementById(id);
const PHONE = window.matchMedia("(max-width: 600px)");
let info = null;
let current = null; // { st, data, hits } of the page shown
let uploadPreview = null; // { id, url } object URL of the file this tab uploaded

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function fmt(x, digits = 3) {
  return Number(x).toFixed(digits);
}

function pct(x) {
  return `${Math.round(100 * x)}%`;
}

// -- state in the URL ------------------------------------------------------------------

function state() {
  const p = new URLSearchParams(location.search);
  return {
    q: p.get("q") || "",
    like: p.get("like") || "",
    image: p.get("image") || "",
    mode: p.get("mode") || "sparse",
    k: p.get("k") || $("k").value || "20",
    terms: p.get("terms") || "",
    w1: p.get("w1") || "",
    w2: p.get("w2") || "",
    force: p.get("force") || "",
  };
}

function setUrl(params, replace = false) {
  const p = new URLSearchParams();
  for (const key of ["q", "like", "image", "mode", "k", "terms", "w1", "w2", "force"]) {
    if (params[key]) p.set(key, params[key]);
  }
  const url = p.toString() ? `?${p}` : location.pathname;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

function update(changes) {
  setUrl({ ...state(), k: $("k").value || state().k, ...changes });
  run();
}

// The term edits of the URL: term -> {factor, require, exclude}, in order.
function quoteTerm(term) {
  let out = term.replace(/%/g, "%25").replace(/,/g, "%2C").replace(/:/g, "%3A");
  if (out[0] === "+" || out[0] === "-") out = `%${out.charCodeAt(0).toString(16).toUpperCase()}${out.slice(1)}`;
  return out;
}

function parseEdits(spec) {
  const edits = new Map();
  for (const raw of (spec || "").split(",")) {
    let entry = raw.trim();
    if (!entry) continue;
    const e = { factor: null, require: false, exclude: false };
    if ((entry[0] === "+" || entry[0] === "-") && entry.length > 1) {
      e.require = entry[0] === "+";
      e.exclude = entry[0] === "-";
      entry = entry.slice(1);
    }
    const colon = entry.lastIndexOf(":");
    if (colon >= 0 && !Number.isNaN(Number(entry.slice(colon + 1)))) {
      e.factor = Number(entry.slice(colon + 1));
      entry = entry.slice(0, colon);
    }
    let term = entry;
    try { term = decodeURIComponent(entry); } catch (err) { /* keep as written */ }
    edits.set(term, e);
  }
  return edits;
}

function editsSpec(edits) {
  const parts = [];
  for (const [term, e] of edits) {
    if (e.factor === null && !e.require && !e.exclude) continue;
    const head = e.require ? "+" : e.exclude ? "-" : "";
    parts.push(`${head}${quoteTerm(term)}${e.factor === null ? "" : `:${Number(e.factor.toPrecision(4))}`}`);
  }
  return parts.join(",");
}

// -- fetch -------------------------------------------------------------------------------

async function getJson(url, options = {}) {
  let resp;
  try {
    resp = await fetch(url, { headers: { Accept: "application/json", ...(options.headers || {}) }, ...options });
  } catch (err) {
    throw new Error(`the server cannot be reached (${err.message})`);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (err) {
    body = null;
  }
  if (!resp.ok) {
    const msg = body && body.error ? body.error : `HTTP ${resp.status}`;
    const error = new Error(resp.status === 503 ? `${msg} (server busy)` : msg);
    error.status = resp.status;
    throw error;
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message ? `Error: ${message}` : "";
  box.hidden = !message;
}

function addWarning(text) {
  $("warnings").append(el("li", {}, text));
}

function busy(text) {
  $("status").replaceChildren(el("span", { class: "spinner", "aria-hidden": "true" }), el("span", {}, text));
}

function status(text) {
  $("status").replaceChildren(text ? el("span", {}, text) : "");
}

// -- chips -------------------------------------------------------------------------------

// Light tint (alpha 0.06 to 0.42) under dark text: at least 4.5:1 at any weight.
function tint(node, share) {
  const alpha = 0.06 + 0.36 * Math.max(0, Math.min(share, 1));
  node.style.backgroundColor = `rgba(var(--chip), ${alpha.toFixed(3)})`;
}

function chip(text, value, title, share, extra = {}) {
  const c = el("li", { class: "chip", title, ...extra }, el("b", {}, text), value === null ? null : el("small", {}, value));
  tint(c, share);
  return c;
}

function termKind(t) {
  if (t.word_piece) return "piece";
  if (t.in_query) return "typed";
  return "expansion";
}

function termTitle(t) {
  const parts = [`query weight ${fmt(t.weight, 4)}`];
  if (t.original_weight !== undefined && Math.abs(t.original_weight - t.weight) > 1e-9) parts.push(`(encoded ${fmt(t.original_weight, 4)})`);
  if (t.in_query) parts.push("· a word of the query");
  else parts.push("· added by the model (expansion)");
  if (t.word_piece) parts.push("· a word piece");
  else if (t.known === false) parts.push("· not a word of the training captions");
  return parts.join(" ");
}

function renderQueryTerms(data, st) {
  const list = $("query-chips");
  list.replaceChildren();
  const edits = parseEdits(st.terms);
  const terms = data.query_terms || [];
  $("query-terms").hidden = terms.length === 0 && edits.size === 0;
  const editable = !!info && info.vocab_size > 0;
  $("query-terms-title").textContent = `Query terms (all ${data.n_query_terms ?? terms.length})`;
  const help = st.mode === "dense"
    ? "Dense scores are not made of words: dropping or boosting a term does not change them; require and exclude still filter the images."
    : "Click a term to drop, boost or require it. Italic: added by the model; dashed: a word piece.";
  $("terms-help").textContent = help;
  const max = Math.max(...terms.map((t) => t.original_weight ?? t.weight), 1e-9);
  const shown = new Set();
  const make = (term, t) => {
    const e = edits.get(term) || { factor: null, require: false, exclude: false };
    const weight = t ? t.weight : 0;
    const btn = el(
      "button",
      { type: "button", class: `chip ${t ? termKind(t) : "expansion"}`, title: t ? termTitle(t) : "not one of the query's terms", "aria-haspopup": "menu", dataset: { term, weight: String(weight) } },
      e.require ? el("span", { class: "tag" }, "+") : e.exclude ? el("span", { class: "tag" }, "−") : null,
      el("b", {}, term),
      el("small", {}, e.factor === 0 ? "dropped" : `${fmt(weight, 2)}${e.factor !== null ? ` ×${e.factor}` : ""}`)
    );
    tint(btn, t ? (t.original_weight ?? t.weight) / max : 0);
    if (e.factor === 0) btn.classList.add("dropped");
    if (e.require) btn.classList.add("required");
    if (e.exclude) btn.classList.add("excluded");
    if (st.mode === "dense") btn.classList.add("off");
    if (editable) btn.addEventListener("click", () => openTermMenu(btn, term));
    return el("li", {}, btn);
  };
  const limit = PHONE.matches ? 12 : Infinity;
  terms.forEach((t, i) => {
    shown.add(t.term);
    const item = make(t.term, t);
    if (i >= limit && !edits.has(t.term)) item.classList.add("hidden-term");
    list.append(item);
  });
  for (const term of edits.keys()) if (!shown.has(term)) list.append(make(term, null));
  if (terms.length > limit) {
    const all = el("button", { type: "button", class: "chip more", "aria-expanded": "false" }, `all ${terms.length} terms`);
    all.addEventListener("click", () => {
      const open = list.classList.toggle("expanded");
      all.setAttribute("aria-expanded", String(open));
      all.textContent = open ? "fewer" : `all ${terms.length} terms`;
    });
    list.append(el("li", {}, all));
  }
  const summary = [];
  for (const [term, e] of edits) {
    if (e.require) summary.push(`“${term}” required`);
    if (e.exclude) summary.push(`“${term}” excluded`);
    if (e.factor === 0) summary.push(`“${term}” dropped`);
    else if (e.factor !== null) summary.push(`“${term}” ×${e.factor}`);
  }
  const box = $("edits");
  box.hidden = summary.length === 0;
  if (summary.length) {
    const reset = el("button", { type: "button", class: "link", id: "edits-reset" }, "undo all edits");
    reset.addEventListener("click", () => update({ terms: "" }));
    box.replaceChildren(el("span", {}, `Edited query: ${summary.join(", ")}. `), reset);
  }
}

let menuTerm = null;

function openTermMenu(button, term) {
  const menu = $("term-menu");
  menuTerm = term;
  $("term-menu-title").textContent = `“${term}”`;
  const rect = button.getBoundingClientRect();
  menu.style.left = `${Math.max(4, Math.min(rect.left + window.scrollX, window.scrollX + document.documentElement.clientWidth - 170))}px`;
  menu.style.top = `${rect.bottom + window.scrollY + 4}px`;
  menu.hidden = false;
  menu.querySelector("button").focus();
  menu.returnTo = button;
}

function closeTermMenu(refocus = true) {
  const menu = $("term-menu");
  if (menu.hidden) return;
  menu.hidden = true;
  if (refocus && menu.returnTo) menu.returnTo.focus();
}

function applyTermAction(action) {
  const st = state();
  const edits = parseEdits(st.terms);
  const e = edits.get(menuTerm) || { factor: null, require: false, exclude: false };
  if (action === "drop") e.factor = 0;
  else if (action === "half") e.factor = Number(((e.factor ?? 1) * 0.5).toPrecision(4));
  else if (action === "boost") e.factor = Number(((e.factor || 1) * 2).toPrecision(4));
  else if (action === "require") { e.require = !e.require; e.exclude = false; }
  else if (action === "exclude") { e.exclude = !e.exclude; e.require = false; }
  else if (action === "reset") { e.factor = null; e.require = false; e.exclude = false; }
  edits.set(menuTerm, e);
  closeTermMenu(false);
  update({ terms: editsSpec(edits) });
}

// -- hits --------------------------------------------------------------------------------

function altText(hit) {
  const top = (hit.terms || []).slice(0, 4).map((t) => t.term);
  const name = hit.filename || hit.image_id;
  return top.length ? `${name}: matches ${top.join(", ")}` : name;
}

function scoreBlock(hit, mode) {
  const box = el("div", { class: "score" });
  box.append(el("b", { title: `${mode} score` }, fmt(hit.score, 3)));
  if (!hit.parts) return box;
  if (mode === "sparse") {
    box.append(el("span", { class: "muted" }, "all from the words"));
  } else if (mode === "dense") {
    box.append(el("span", { class: "muted" }, "dense: not from words"));
  } else {
    const d = hit.parts.dense;
    const s = hit.parts.sparse;
    box.append(el("span", { class: "muted", title: `w1·dense = ${fmt(d, 4)}, w2·sparse = ${fmt(s, 4)}` }, `= dense ${fmt(d, 2)} + words ${fmt(s, 2)}`));
    if (d < 0) box.append(el("span", { class: "muted" }, "(the dense part is negative)"));
    const bar = el("div", { class: "bar", role: "img", "aria-label": `words explain ${pct(hit.explained)} of the score` },
      el("span", { class: "words", style: `width:${(100 * hit.explained).toFixed(1)}%` }),
      el("span", { class: "dense", style: `width:${(100 * (1 - hit.explained)).toFixed(1)}%` }));
    box.append(el("span", { class: "muted" }, `words explain ${pct(hit.explained)}`));
    const wrap = el("div", {}, box, bar);
    return wrap;
  }
  return box;
}

function renderHit(hit, mode) {
  const img = hit.url
    ? el("img", { src: hit.url, alt: altText(hit), loading: hit.rank <= 24 ? "eager" : "lazy", decoding: "async" })
    : el("span", { class: "noimg" }, hit.filename || hit.image_id);
  if (hit.url) {
    img.addEventListener("error", () => img.replaceWith(el("span", { class: "noimg" }, `${hit.filename} (file missing)`)));
  }
  const open = el(
    "button",
    { class: "open", type: "button", "aria-label": `rank ${hit.rank}: open ${hit.filename || hit.image_id}` },
    img,
    el("span", { class: "rank" }, `#${hit.rank}`)
  );
  open.addEventListener("click", () => openDetail(hit));
  const terms = hit.terms || [];
  const shownCount = PHONE.matches ? 3 : 8;
  const chips = el("ul", { class: "chips hit-terms", "aria-label": mode === "dense" ? "shared terms (not part of the dense score)" : "matching terms" });
  const max = Math.max(...terms.map((t) => t.contribution), 1e-9);
  terms.forEach((t, i) => {
    const c = chip(
      t.term,
      fmt(t.contribution, 2),
      `query ${fmt(t.query_weight, 3)} × image ${fmt(t.image_weight, 3)} = ${fmt(t.contribution, 4)}`,
      t.contribution / max,
      { dataset: { term: t.term, contribution: String(t.contribution) } }
    );
    if (mode === "dense") c.classList.add("off");
    if (i >= shownCount) c.classList.add("hidden-term");
    chips.append(c);
  });
  const card = el(
    "li",
    {
      class: "card",
      dataset: {
        imageId: hit.image_id,
        score: String(hit.score),
        sparseScore: String(hit.sparse_score ?? ""),
        denseScore: String(hit.dense_score ?? ""),
        explained: String(hit.explained ?? ""),
        rank: String(hit.rank),
      },
    },
    open
  );
  if (terms.length > shownCount) {
    const rest = terms.slice(shownCount).reduce((s, t) => s + t.contribution, 0);
    const label = `+${terms.length - shownCount} more terms, together ${fmt(rest, 2)}`;
    const more = el("button", { class: "chip more", type: "button", "aria-expanded": "false" }, label);
    more.addEventListener("click", () => {
      const expanded = card.classList.toggle("expanded");
      more.setAttribute("aria-expanded", String(expanded));
      more.textContent = expanded ? "fewer" : label;
    });
    chips.append(el("li", {}, more));
  }
  const meta = el("div", { class: "meta" }, el("div", { class: "name", title: hit.filename || hit.image_id }, hit.filename || hit.image_id), scoreBlock(hit, mode));
  if (mode === "dense" && terms.length) meta.append(el("p", { class: "lacks" }, "shared terms (not in the dense score):"));
  meta.append(terms.length ? chips : el("p", { class: "muted" }, "no shared sparse term"));
  const missing = hit.missing_terms || [];
  if (missing.length) {
    const lacks = el("ul", { class: "chips lacks", "aria-label": "query terms this image lacks" });
    for (const t of missing.slice(0, 4)) {
      lacks.append(el("li", { class: "chip missing", title: `the image lacks this query term (query weight ${fmt(t.query_weight, 3)})`, dataset: { term: t.term } }, el("b", {}, t.term)));
    }
    const extra = hit.n_missing - Math.min(missing.length, 4);
    meta.append(el("p", { class: "lacks" }, "lacks: "), lacks);
    if (extra > 0) lacks.append(el("li", { class: "muted" }, `+${extra}`));
  }
  card.append(meta);
  return card;
}

// -- detail dialog -----------------------------------------------------------------------

async function openDetail(hit) {
  const dialog = $("detail");
  dialog.hit = hit;
  $("detail-title").textContent = `${hit.filename || hit.image_id} (rank ${hit.rank})`;
  const img = $("detail-img");
  img.hidden = !hit.url;
  if (hit.url) {
    img.src = hit.url;
    img.alt = altText(hit);
  }
  const mode = current ? current.data.mode : "sparse";
  let scoreText = `${mode} score ${fmt(hit.score, 4)}`;
  if (hit.parts && mode === "hybrid") scoreText += ` = w1·dense ${fmt(hit.parts.dense, 4)} + w2·sparse ${fmt(hit.parts.sparse, 4)}; the words explain ${pct(hit.explained)}`;
  $("detail-score").textContent = scoreText;
  const matched = (hit.terms || []).slice(0, 6).map((t) => t.term).join(", ");
  const lacks = (hit.missing_terms || []).slice(0, 6).map((t) => t.term).join(", ");
  $("detail-match").textContent = (matched ? `Shares with the query: ${matched}. ` : "") + (lacks ? `Lacks: ${lacks}.` : "");
  const st = state();
  const more = $("more-like");
  more.href = `?${new URLSearchParams({ like: hit.image_id, mode: st.mode, k: $("k").value || st.k })}`;
  const list = $("detail-terms");
  list.replaceChildren(el("li", { class: "muted" }, "loading…"));
  if (!dialog.open) dialog.showModal();
  more.focus();
  try {
    const data = await getJson(`/api/images/${encodeURIComponent(hit.image_id)}/terms?k=30`);
    const max = Math.max(...data.terms.map((t) => t.weight), 1e-9);
    list.replaceChildren(
      ...data.terms.map((t) =>
        chip(t.term, fmt(t.weight, 2), `image weight ${fmt(t.weight, 4)}`, t.weight / max, { dataset: { term: t.term } })
      )
    );
    if (!data.terms.length) list.replaceChildren(el("li", { class: "muted" }, "this image has no indexed term"));
  } catch (err) {
    list.replaceChildren(el("li", { class: "error" }, err.message));
  }
}

function stepDetail(delta) {
  const dialog = $("detail");
  if (!dialog.open || !current || !dialog.hit) return;
  const i = current.hits.findIndex((h) => h.image_id === dialog.hit.image_id);
  const next = current.hits[i + delta];
  if (next) openDetail(next);
}

// -- searching ---------------------------------------------------------------------------

function searchParams(st, offset = 0) {
  const params = new URLSearchParams({ k: st.k, mode: st.mode, explain: "true" });
  if (offset) params.set("offset", String(offset));
  if (st.terms) params.set("terms", st.terms);
  if (st.mode === "hybrid" && (st.w1 || st.w2)) {
    if (st.w1) params.set("w1", st.w1);
    if (st.w2) params.set("w2", st.w2);
  }
  if (st.force) params.set("force", "true");
  return params;
}

function renderSource(st, data) {
  const box = $("source");
  const img = $("source-img");
  if (st.like) {
    box.hidden = false;
    const name = data && data.like_filename ? data.like_filename : st.like;
    const url = info && info.image_files ? null : null;
    img.hidden = true;
    getJson(`/api/images/${encodeURIComponent(st.like)}/terms?k=1`).then((d) => {
      if (d.url) {
        img.src = d.url;
        img.alt = `the query image ${d.filename}`;
        img.hidden = false;
      }
      $("source-text").textContent = `Images like ${d.filename || st.like} (its indexed vectors are the query; the image itself is left out)`;
    }).catch(() => {});
    $("source-text").textContent = `Images like ${name}`;
    return url;
  }
  if (st.image) {
    box.hidden = false;
    img.hidden = false;
    img.src = uploadPreview && uploadPreview.id === st.image ? uploadPreview.url : `/api/uploads/${encodeURIComponent(st.image)}/thumbnail`;
    img.alt = "the uploaded query image";
    const up = data && data.upload;
    $("source-text").textContent = up
      ? `Images like your ${up.kind.toUpperCase()} image (${up.width} × ${up.height})`
      : "Images like your uploaded image";
    return null;
  }
  box.hidden = true;
  return null;
}

function renderWeights(st, data) {
  const box = $("weights");
  const hybrid = st.mode === "hybrid" && info && info.modes.includes("hybrid");
  box.hidden = !hybrid;
  if (!hybrid || !info) return;
  const W1 = info.w1, W2 = info.w2;
  const w1 = st.w1 ? Number(st.w1) : W1;
  const w2 = st.w2 ? Number(st.w2) : W2;
  // slider p in [0, 100]: w1 = 2p/100 · W1, w2 = 2(1 - p/100) · W2 (50: the run's weights)
  const a = W1 > 0 ? w1 / W1 : 0, b = W2 > 0 ? w2 / W2 : 0;
  const p = a + b > 0 ? (100 * a) / (a + b) : 50;
  $("slider").value = String(Math.round(p));
  showWeights(w1, w2);
  $("weights-reset").hidden = !(st.w1 || st.w2);
}

function showWeights(w1, w2) {
  $("weights-value").textContent = `score = ${fmt(w1, 3)} · dense + ${fmt(w2, 3)} · sparse (the run's: ${fmt(info.w1, 3)} and ${fmt(info.w2, 3)})`;
}

function sliderWeights() {
  const p = Number($("slider").value) / 100;
  return [2 * p * info.w1, 2 * (1 - p) * info.w2];
}

async function run() {
  const st = state();
  closeTermMenu(false);
  $("q").value = st.q;
  $("k").value = st.k;
  for (const r of document.querySelectorAll("input[name=mode]")) r.checked = r.value === st.mode;
  showError("");
  $("notes").replaceChildren();
  $("nomatch").hidden = true;
  $("more").hidden = true;
  $("count").textContent = "";
  const grid = $("grid");
  renderWeights(st, null);
  renderSource(st, null);
  $("q").placeholder = st.like || st.image ? "or type words to search by text" : "a dog runs on the beach";
  if (!st.q && !st.like && !st.image) {
    grid.replaceChildren();
    $("query-terms").hidden = true;
    current = null;
    status(info && !info.text_search ? "Browse the collection below, open an image and choose “More like this”." : "Type a query, or search by image.");
    if (info && !info.text_search) await browse();
    return;
  }
  busy("searching…");
  grid.setAttribute("aria-busy", "true");
  const params = searchParams(st);
  if (st.like) params.set("like", st.like);
  else if (st.image) params.set("image", st.image);
  else params.set("q", st.q);
  try {
    const data = await getJson(`/api/search?${params}`);
    if (info && data.generation !== undefined && data.generation !== info.generation) {
      refreshInfo(); // photos were added or removed: the header's count follows
    }
    render(st, data);
  } catch (err) {
    grid.replaceChildren();
    $("query-terms").hidden = true;
    status("");
    showError(err.status === 404 && st.image ? `${err.message} (choose the file again with “Search by image…”)` : err.message);
  } finally {
    grid.removeAttribute("aria-busy");
  }
}

function render(st, data) {
  const grid = $("grid");
  current = { st, data, hits: data.hits.slice() };
  renderQueryTerms(data, st);
  renderSource(st, data);
  $("notes").replaceChildren(...data.notes.map((n) => el("li", {}, n)));
  grid.replaceChildren(...data.hits.map((h) => renderHit(h, data.mode)));
  const what = st.like ? `image ${st.like}` : st.image ? "your image" : `“${data.query}”`;
  const conf = data.confidence;
  if (!data.hits.length && conf && conf.verdict === "no_match") {
    $("nomatch").hidden = false;
    $("query-terms").hidden = true; // the expansions of a nonsense query explain nothing
    $("notes").replaceChildren(...data.notes.filter((n) => !n.startsWith("no good match")).map((n) => el("li", {}, n)));
    $("nomatch-reason").textContent = `${conf.reasons.join("; ")}. Nothing in the collection is a good answer to “${data.query}”.`;
    status("");
  } else if (data.hits.length) {
    const forced = conf && conf.verdict === "no_match" ? " — no good match; the closest shown anyway" : "";
    status(`${data.total} images ranked ${st.like || st.image ? "by likeness to" : "for"} ${what}, ${data.mode} score, ${data.engine} engine, ${fmt(data.seconds.total * 1000, 1)} ms${forced}`);
  } else {
    status(`No image matched ${what}.`);
    grid.replaceChildren(el("li", { class: "empty" }, "No result. The notes above say why."));
  }
  updateMore();
  document.title = `${st.like ? "like " + st.like : st.image ? "your image" : data.query} – mmsparse search`;
}

function updateMore() {
  if (!current) return;
  const { data, hits } = current;
  const shown = hits.length;
  $("count").textContent = shown ? `showing ${shown} of ${data.total}` : "";
  const depth = info ? info.limits.max_depth : 1000;
  $("more").hidden = !(data.more && shown < Math.min(data.total, depth));
}

async function loadMore() {
  if (!current) return;
  const st = current.st;
  const params = searchParams(st, current.hits.length);
  const depth = info ? info.limits.max_depth : 1000;
  params.set("k", String(Math.min(Number(st.k), depth - current.hits.length)));
  if (st.like) params.set("like", st.like);
  else if (st.image) params.set("image", st.image);
  else params.set("q", st.q);
  const button = $("more");
  button.disabled = true;
  busy("loading more…");
  try {
    const data = await getJson(`/api/search?${params}`);
    current.hits.push(...data.hits);
    current.data.more = data.more;
    current.data.total = data.total;
    $("grid").append(...data.hits.map((h) => renderHit(h, data.mode)));
    status(`${data.total} images ranked, ${data.mode} score`);
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
    updateMore();
  }
}

async function browse() {
  try {
    const data = await getJson(`/api/images?k=${encodeURIComponent($("k").value || 20)}`);
    $("grid").replaceChildren(...data.images.map((h, i) => renderHit({ ...h, rank: i + 1, score: 0 }, "browse")));
    current = { st: state(), data: { mode: "browse", total: data.total, more: false }, hits: data.images };
  } catch (err) {
    showError(err.message);
  }
}

async function uploadFile(file) {
  if (!file) return;
  showError("");
  if (!info || !info.image_search) {
    showError(`search by image is not available: ${info ? info.image_search_error : "no index info"}`);
    return;
  }
  const limit = info.limits.max_upload_mb * 1e6;
  if (file.size > limit) {
    showError(`the image is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${info.limits.max_upload_mb} MB`);
    return;
  }
  const mode = document.querySelector("input[name=mode]:checked").value;
  const k = $("k").value || "20";
  busy(`encoding ${file.name}…`);
  try {
    const params = new URLSearchParams({ k, mode, explain: "true" });
    const data = await getJson(`/api/search/image?${params}`, {
      method: "POST",
      body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    if (uploadPreview) URL.revokeObjectURL(uploadPreview.url);
    uploadPreview = { id: data.upload.id, url: URL.createObjectURL(file) };
    setUrl({ image: data.upload.id, mode, k });
    render(state(), data);
  } catch (err) {
    status("");
    showError(err.message);
  } finally {
    $("upload").value = "";
  }
}

function submit(event) {
  if (event) event.preventDefault();
  const q = $("q").value.trim();
  const mode = document.querySelector("input[name=mode]:checked").value;
  const k = $("k").value;
  if (!q) {
    showError("type some words to search for");
    $("q").focus();
    return;
  }
  const st = state();
  // The same words keep their edits and weights; new words start afresh.
  const keep = q === st.q ? { terms: st.terms, w1: st.w1, w2: st.w2 } : {};
  setUrl({ q, mode, k, ...keep });
  run();
}

function showInfo() {
  const where = info.split ? `${info.split} images` : "images";
  $("info").textContent = `${info.images} ${where} · ${info.engine} engine · run ${info.run} · vocabulary ${info.vocab_size} terms · modes ${info.modes.join(", ")}`;
  $("info").title = `index generation ${info.generation} (${info.segments} segment(s))`;
}

async function refreshInfo() {
  try {
    info = await getJson("/api/info");
    showInfo();
  } catch (err) {
    // the header keeps the last count; the search itself was answered
  }
}

async function waitReady() {
  const banner = $("ready");
  for (;;) {
    try {
      const resp = await fetch("/readyz");
      if (resp.ok) break;
      banner.hidden = false;
    } catch (err) {
      break;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  banner.hidden = true;
}

async function init() {
  $("search-form").addEventListener("submit", submit);
  for (const r of document.querySelectorAll("input[name=mode]")) {
    r.addEventListener("change", () => {
      const st = state();
      if (st.q || st.like || st.image) update({ mode: r.value, k: $("k").value || st.k });
    });
  }
  $("more-like").addEventListener("click", (event) => {
    event.preventDefault();
    const url = new URL($("more-like").href, location.href);
    $("detail").close();
    history.pushState(null, "", url.search);
    run();
    window.scrollTo(0, 0);
  });
  $("more").addEventListener("click", loadMore);
  $("show-anyway").addEventListener("click", () => update({ force: "1" }));
  $("source-clear").addEventListener("click", () => {
    setUrl({ mode: state().mode, k: state().k });
    run();
  });
  $("upload").addEventListener("change", () => uploadFile($("upload").files[0]));
  document.addEventListener("dragover", (event) => {
    if (info && info.image_search) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    if (!info || !info.image_search) return;
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) uploadFile(file);
  });
  $("slider").addEventListener("input", () => {
    const [w1, w2] = sliderWeights();
    showWeights(w1, w2);
  });
  $("slider").addEventListener("change", () => {
    const [w1, w2] = sliderWeights();
    const same = Number($("slider").value) === 50;
    update({ w1: same ? "" : String(Number(w1.toPrecision(4))), w2: same ? "" : String(Number(w2.toPrecision(4))) });
  });
  $("weights-reset").addEventListener("click", () => update({ w1: "", w2: "" }));
  for (const b of $("term-menu").querySelectorAll("button")) {
    b.addEventListener("click", () => applyTermAction(b.dataset.action));
  }
  document.addEventListener("click", (event) => {
    const menu = $("term-menu");
    if (!menu.hidden && !menu.contains(event.target) && !(event.target.closest && event.target.closest("#query-chips"))) closeTermMenu(false);
  });
  window.addEventListener("popstate", run);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("term-menu").hidden) {
      closeTermMenu();
      return;
    }
    if ($("detail").open && (event.key === "ArrowRight" || event.key === "ArrowLeft")) {
      event.preventDefault();
      stepDetail(event.key === "ArrowRight" ? 1 : -1);
      return;
    }
    if (event.key === "/" && document.activeElement !== $("q") && !$("detail").open) {
      event.preventDefault();
      $("q").focus();
      $("q").select();
    }
  });
  const ready = waitReady();
  try {
    info = await getJson("/api/info");
    showInfo();
    for (const r of document.querySelectorAll("input[name=mode]")) {
      const ok = info.modes.includes(r.value);
      r.disabled = !ok;
      r.parentElement.title = ok ? `${r.value} score` : `this ${info.engine} index holds sparse vectors only (build it with --dense for ${r.value})`;
    }
    $("k").max = String(info.limits.max_k);
    $("upload-label").hidden = !info.image_search;
    if (!info.text_search) {
      const why = String(info.text_search_error || "").split("; search by caption")[0];
      addWarning(`Text search is not available for this run (${why}). Search by image instead: open an image below and choose “More like this”${info.image_search ? ", or upload a photo" : ""}.`);
      $("q").disabled = true;
      $("q").placeholder = "text search is not available for this run";
    }
    const check = info.image_files_check;
    if (!info.image_files) {
      addWarning("The server has no folder of the image files: results show file names only (start the server with --images DIR).");
    } else if (check && check.missing) {
      addWarning(`${check.missing} of ${check.checked} image files checked are missing from the server's images folder (e.g. ${check.examples.join(", ")}): ${check.all_missing ? "results show file names only" : "their tiles show the names"}. Was the server started with the right --images folder?`);
    }
  } catch (err) {
    $("info").textContent = "";
    addWarning(`The index information could not be read: ${err.message}`);
  }
  await run();
  await ready;
}

document.addEventListener("DOMContentLoaded", init);
