// mmsparse search page: plain JavaScript, no build step, no external resources.
// The state lives in the URL (?q=...&mode=...&k=...  or  ?like=IMAGE_ID&mode=sparse), so a
// result page can be shared and the back button works.
"use strict";

const $ = (id) => document.getElementById(id);
const CHIPS_SHOWN = 8;
let info = null;

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

function state() {
  const p = new URLSearchParams(location.search);
  return {
    q: p.get("q") || "",
    like: p.get("like") || "",
    mode: p.get("mode") || "sparse",
    k: p.get("k") || $("k").value || "20",
  };
}

function setUrl(params, replace = false) {
  const p = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) p.set(key, value);
  const url = p.toString() ? `?${p}` : location.pathname;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

async function getJson(url) {
  let resp;
  try {
    resp = await fetch(url, { headers: { Accept: "application/json" } });
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
    throw new Error(resp.status === 503 ? `${msg} (server busy)` : msg);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message ? `Error: ${message}` : "";
  box.hidden = !message;
}

function chip(text, value, title, alpha, extra = {}) {
  const c = el("li", { class: "chip", title, ...extra }, el("b", {}, text), el("small", {}, value));
  c.style.background = `rgba(var(--chip), ${Math.max(0.06, Math.min(alpha, 1)).toFixed(3)})`;
  if (alpha > 0.55) c.classList.add("dark");
  return c;
}

function renderQueryTerms(terms) {
  const list = $("query-chips");
  list.replaceChildren();
  $("query-terms").hidden = terms.length === 0;
  const max = Math.max(...terms.map((t) => t.weight), 1e-9);
  for (const t of terms) {
    list.append(
      chip(t.term, fmt(t.weight, 2), `query weight ${fmt(t.weight, 4)}`, t.weight / max, {
        dataset: { term: t.term, weight: String(t.weight) },
      })
    );
  }
}

function renderHit(hit) {
  const img = hit.url
    ? el("img", { src: hit.url, alt: `image ${hit.image_id}`, loading: "eager", decoding: "async" })
    : el("span", { class: "noimg" }, hit.filename || hit.image_id);
  const open = el(
    "button",
    { class: "open", type: "button", "aria-label": `rank ${hit.rank}: open image ${hit.image_id}` },
    img,
    el("span", { class: "rank" }, `#${hit.rank}`)
  );
  open.addEventListener("click", () => openDetail(hit));
  const terms = hit.terms || [];
  const chips = el("ul", { class: "chips hit-terms", "aria-label": "matching terms" });
  const max = Math.max(...terms.map((t) => t.contribution), 1e-9);
  terms.forEach((t, i) => {
    const c = chip(
      t.term,
      fmt(t.contribution, 3),
      `query ${fmt(t.query_weight, 3)} × image ${fmt(t.image_weight, 3)} = ${fmt(t.contribution, 4)}`,
      t.contribution / max,
      { dataset: { term: t.term, contribution: String(t.contribution) } }
    );
    if (i >= CHIPS_SHOWN) c.classList.add("hidden-term");
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
        rank: String(hit.rank),
      },
    },
    open
  );
  if (terms.length > CHIPS_SHOWN) {
    const rest = terms.slice(CHIPS_SHOWN).reduce((s, t) => s + t.contribution, 0);
    const more = el(
      "button",
      { class: "chip more", type: "button", "aria-expanded": "false" },
      `+${terms.length - CHIPS_SHOWN} more (${fmt(rest, 3)})`
    );
    more.addEventListener("click", () => {
      const expanded = card.classList.toggle("expanded");
      more.setAttribute("aria-expanded", String(expanded));
      more.textContent = expanded ? "fewer" : `+${terms.length - CHIPS_SHOWN} more (${fmt(rest, 3)})`;
    });
    chips.append(el("li", {}, more));
  }
  // In sparse mode the score is the sparse score (up to float rounding): show it once.
  const scoreLabel = hit.sparse_score !== undefined && Math.abs(hit.sparse_score - hit.score) > 1e-4 * Math.max(1, Math.abs(hit.score))
    ? `${fmt(hit.score, 4)} (sparse ${fmt(hit.sparse_score, 4)})`
    : fmt(hit.score, 4);
  card.append(
    el(
      "div",
      { class: "meta" },
      el("div", { class: "line" }, el("span", { title: hit.filename || hit.image_id }, hit.filename || hit.image_id), el("span", { class: "score" }, scoreLabel)),
      terms.length ? chips : el("p", { class: "muted" }, "no shared sparse term")
    )
  );
  return card;
}

async function openDetail(hit) {
  const dialog = $("detail");
  $("detail-title").textContent = `${hit.filename || hit.image_id} (rank ${hit.rank}, score ${fmt(hit.score, 4)})`;
  const img = $("detail-img");
  img.hidden = !hit.url;
  if (hit.url) {
    img.src = hit.url;
    img.alt = `image ${hit.image_id}`;
  }
  const matched = (hit.terms || []).slice(0, 5).map((t) => t.term).join(", ");
  $("detail-match").textContent = matched ? `Matched the query on: ${matched}` : "";
  const st = state();
  const more = $("more-like");
  more.href = `?${new URLSearchParams({ like: hit.image_id, mode: "sparse", k: st.k })}`;
  const list = $("detail-terms");
  list.replaceChildren(el("li", { class: "muted" }, "loading…"));
  if (!dialog.open) dialog.showModal();
  more.focus();
  try {
    const data = await getJson(`/api/images/${encodeURIComponent(hit.image_id)}/terms?k=30`);
    const max = Math.max(...data.terms.map((t) => t.weight), 1e-9);
    list.replaceChildren(
      ...data.terms.map((t) =>
        chip(t.term, fmt(t.weight, 2), `image weight ${fmt(t.weight, 4)}`, t.weight / max, {
          dataset: { term: t.term },
        })
      )
    );
    if (!data.terms.length) list.replaceChildren(el("li", { class: "muted" }, "this image has no indexed term"));
  } catch (err) {
    list.replaceChildren(el("li", { class: "error" }, err.message));
  }
}

async function run() {
  const st = state();
  $("q").value = st.q;
  $("k").value = st.k;
  for (const r of document.querySelectorAll("input[name=mode]")) r.checked = r.value === st.mode;
  showError("");
  $("notes").replaceChildren();
  const grid = $("grid");
  if (!st.q && !st.like) {
    grid.replaceChildren();
    $("query-terms").hidden = true;
    $("status").textContent = "Type a query to search the images.";
    return;
  }
  $("status").textContent = "searching…";
  grid.setAttribute("aria-busy", "true");
  const params = new URLSearchParams({ k: st.k, mode: st.mode, explain: "true" });
  if (st.like) params.set("like", st.like);
  else params.set("q", st.q);
  try {
    const data = await getJson(`/api/search?${params}`);
    if (info && data.generation !== undefined && data.generation !== info.generation) {
      refreshInfo(); // photos were added or removed: the header's count follows
    }
    renderQueryTerms(data.query_terms);
    $("notes").replaceChildren(...data.notes.map((n) => el("li", {}, n)));
    grid.replaceChildren(...data.hits.map(renderHit));
    const what = st.like ? `images like ${st.like}` : `“${data.query}”`;
    $("status").textContent = data.hits.length
      ? `${data.hits.length} images for ${what}, ${data.mode} score, ${data.engine} engine, ${fmt(data.seconds.total * 1000, 1)} ms`
      : `No image matched ${what}.`;
    if (!data.hits.length) {
      grid.replaceChildren(el("li", { class: "empty" }, "No result. Try other words: the notes above say why nothing matched."));
    }
    document.title = `${st.like ? "like " + st.like : data.query} – mmsparse search`;
  } catch (err) {
    grid.replaceChildren();
    $("query-terms").hidden = true;
    $("status").textContent = "";
    showError(err.message);
  } finally {
    grid.removeAttribute("aria-busy");
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
  setUrl({ q, mode, k });
  run();
}

function showInfo() {
  const run = info.run.split("/").filter(Boolean).pop();
  const source = info.images_dir
    ? `images of ${info.images_dir.split("/").filter(Boolean).pop()}`
    : `${info.split} images`;
  $("info").textContent = `${info.images} ${source} · ${info.engine} engine · run ${run} · vocabulary ${info.vocab_size} terms`;
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

async function init() {
  $("search-form").addEventListener("submit", submit);
  for (const r of document.querySelectorAll("input[name=mode]")) {
    r.addEventListener("change", () => {
      const st = state();
      if (st.q || st.like) {
        setUrl({ q: st.q, like: st.like, mode: r.value, k: st.k });
        run();
      }
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
  window.addEventListener("popstate", run);
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== $("q") && !$("detail").open) {
      event.preventDefault();
      $("q").focus();
      $("q").select();
    }
  });
  try {
    info = await getJson("/api/info");
    showInfo();
    for (const r of document.querySelectorAll("input[name=mode]")) {
      const ok = info.modes.includes(r.value);
      r.disabled = !ok;
      r.parentElement.title = ok ? `${r.value} score` : `this ${info.engine} index holds sparse vectors only (build it with --dense)`;
    }
    $("k").max = String(info.limits.max_k);
    if (!info.text_search) showError(`text search is not available: ${info.text_search_error}`);
  } catch (err) {
    $("info").textContent = "";
    showError(err.message);
  }
  await run();
}

document.addEventListener("DOMContentLoaded", init);
