// The API reference: /openapi.json rendered by plain JavaScript (no CDN, works offline).
"use strict";

function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function typeOf(schema, spec) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.anyOf) return schema.anyOf.map((s) => typeOf(s, spec)).filter((t) => t !== "null").join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  let t = schema.type || "object";
  if (schema.format) t += ` (${schema.format})`;
  const limits = [];
  if (schema.minimum !== undefined) limits.push(`≥ ${schema.minimum}`);
  if (schema.maximum !== undefined) limits.push(`≤ ${schema.maximum}`);
  return limits.length ? `${t}, ${limits.join(", ")}` : t;
}

function operation(path, method, op, spec) {
  const id = `${method}-${path}`.replace(/[^a-z0-9]+/gi, "-");
  const sec = h("section", { class: "op", id });
  sec.append(h("h2", {}, h("span", { class: `verb ${method}` }, method.toUpperCase()), " ", h("code", {}, path)));
  if (op.summary) sec.append(h("p", { class: "summary" }, op.summary));
  if (op.description) {
    for (const para of op.description.split(/\n\n+/)) sec.append(h("p", { class: "muted" }, para.replace(/\n/g, " ")));
  }
  const params = op.parameters || [];
  if (params.length) {
    const table = h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "parameter"), h("th", {}, "in"), h("th", {}, "type"), h("th", {}, "description"))));
    const body = h("tbody");
    for (const p of params) {
      body.append(h("tr", {}, h("td", {}, h("code", {}, p.name), p.required ? " (required)" : ""), h("td", {}, p.in), h("td", {}, typeOf(p.schema, spec)), h("td", {}, p.description || (p.schema && p.schema.description) || "")));
    }
    table.append(body);
    sec.append(table);
  }
  if (op.requestBody) {
    const types = Object.keys(op.requestBody.content || {}).join(", ");
    sec.append(h("p", {}, h("b", {}, "Request body: "), `${op.requestBody.description || ""} (${types})`));
  }
  const rows = Object.entries(op.responses || {}).map(([code, r]) => {
    const content = r.content || {};
    const schema = Object.values(content).map((c) => typeOf(c.schema, spec)).filter(Boolean).join(", ");
    return h("li", {}, h("code", {}, code), ` ${r.description || ""}${schema ? ` — ${schema}` : ""}`);
  });
  sec.append(h("p", {}, h("b", {}, "Responses:")), h("ul", { class: "responses" }, ...rows));
  return sec;
}

async function main() {
  const root = document.getElementById("api");
  try {
    const resp = await fetch("/openapi.json");
    const spec = await resp.json();
    const toc = h("ul", { class: "toc" });
    const ops = [];
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        const sec = operation(path, method, op, spec);
        ops.push(sec);
        toc.append(h("li", {}, h("a", { href: `#${sec.id}` }, `${method.toUpperCase()} ${path}`), op.summary ? ` — ${op.summary}` : ""));
      }
    }
    root.replaceChildren(h("p", { class: "muted" }, `${spec.info.title} ${spec.info.version}: ${spec.info.description || ""}`), toc, ...ops);
  } catch (err) {
    root.replaceChildren(h("p", { class: "error" }, `Cannot read /openapi.json: ${err.message}`));
  } finally {
    root.removeAttribute("aria-busy");
  }
}

document.addEventListener("DOMContentLoaded", main);
