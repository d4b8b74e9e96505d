// The API reference: every path of /openapi.json with its methods, summary and parameters.
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

async function render() {
  const main = document.getElementById("api");
  const spec = await (await fetch("/openapi.json")).json();
  main.replaceChildren(el("p", `${spec.info.title} ${spec.info.version}: ${spec.info.description || ""}`));
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const section = el("section");
      section.append(el("h2", `${method.toUpperCase()} ${path}`));
      if (op.summary) section.append(el("p", op.summary));
      const params = op.parameters || [];
      if (params.length) {
        const dl = el("dl");
        for (const p of params) {
          const type = p.schema && (p.schema.type || (p.schema.anyOf || []).map((s) => s.type).join(" | "));
          dl.append(el("dt", `${p.name} (${p.in})`), el("dd", `${type || ""}${p.required ? ", required" : ""}`));
        }
        section.append(dl);
      }
      if (op.requestBody) {
        section.append(el("p", "Body: " + Object.keys(op.requestBody.content || {}).join(" or ")));
      }
      main.append(section);
    }
  }
}

render().catch((e) => { document.getElementById("api").textContent = "Could not read /openapi.json: " + e; });
