// The page's script: plain JS, no build step, no external resources. It reads /v1/model, sends the chosen
// images to /v1/predict (and /v1/explain for the overlay), and shows the top-k as bars.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;

function headers() {
  const token = $("token").value;
  return token ? { Authorization: "Bearer " + token } : {};
}

function setStatus(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.detail || body.error || response.statusText;
  } catch (e) {
    return response.statusText;
  }
}

function fact(list, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

async function loadModel() {
  const response = await fetch("/v1/model", { headers: headers() });
  if (response.status === 401) {
    $("token-row").hidden = false;
    $("model-line").textContent = "This server requires a token: enter it below.";
    return;
  }
  if (!response.ok) {
    $("model-line").textContent = "Could not read the model: " + (await errorText(response));
    return;
  }
  model = await response.json();
  $("token-row").hidden = !model.token_required;
  $("model-line").textContent = `Model ${model.name} (${model.arch}, ${model.num_classes} classes)`;
  $("limit").textContent = String(model.max_upload_mb);
  const facts = $("model-facts");
  facts.replaceChildren();
  const p = model.preprocess;
  fact(facts, "name", model.name);
  fact(facts, "architecture", model.arch);
  fact(facts, "weights", model.source + (model.sha256 ? ` (sha256 ${model.sha256.slice(0, 12)})` : ""));
  fact(facts, "preprocessing", `resize shorter side to ${p.resize_size} (${p.interpolation}), ` +
       `center crop ${p.input_size}, mean ${p.mean.join(", ")}, std ${p.std.join(", ")}`);
  fact(facts, "engine", model.engine);
  fact(facts, "batching", `up to ${model.max_batch} images per engine call`);
  $("class-count").textContent = String(model.classes.length);
  $("classes").replaceChildren(...model.classes.map((c) => {
    const li = document.createElement("li");
    li.textContent = c;
    return li;
  }));
}

function bars(predictions) {
  const div = document.createElement("div");
  div.className = "bars";
  const list = document.createElement("ol");
  list.className = "predictions";
  list.setAttribute("aria-label", "top classes");
  for (const p of predictions) {
    const li = document.createElement("li");
    li.className = "bar";
    li.dataset.index = String(p.index);
    li.dataset.label = p.label;
    li.dataset.probability = String(p.probability);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "meter");
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    track.setAttribute("aria-valuenow", (100 * p.probability).toFixed(1));
    track.setAttribute("aria-label", p.label);
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = (100 * p.probability).toFixed(1) + "%";
    fill.style.display = "block";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = (100 * p.probability).toFixed(2) + " %";
    li.append(label, track, value);
    list.append(li);
  }
  div.append(list);
  return div;
}

function figure(src, caption) {
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

async function classify(file) {
  const box = document.createElement("article");
  box.className = "result";
  box.setAttribute("aria-label", file.name);
  const title = document.createElement("h3");
  title.textContent = file.name;
  box.append(title);
  $("results").prepend(box);
  box.append(figure(URL.createObjectURL(file), "the image"));
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch("/v1/predict", { method: "POST", body: form, headers: headers() });
  if (!response.ok) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = `${response.status}: ${await errorText(response)}`;
    box.append(p);
    return false;
  }
  const [result] = await response.json();
  box.append(bars(result.predictions));
  if ($("explain").checked) {
    const r = await fetch("/v1/explain", { method: "POST", body: file, headers: headers() });
    if (r.ok) {
      const label = r.headers.get("X-Label") || "the top class";
      box.append(figure(URL.createObjectURL(await r.blob()), `Grad-CAM: evidence for ${label}`));
    } else {
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = `overlay: ${r.status}: ${await errorText(r)}`;
      box.append(p);
    }
  }
  return true;
}

async function handle(files) {
  if (!files.length) return;
  if (!model) await loadModel();
  setStatus(`Classifying ${files.length} image(s)…`);
  let ok = 0;
  for (const f of files) {
    try {
      if (await classify(f)) ok += 1;
    } catch (e) {
      setStatus(`${f.name}: ${e}`, true);
    }
  }
  setStatus(`Done: ${ok} of ${files.length} classified.`, ok !== files.length);
}

$("files").addEventListener("change", (e) => handle([...e.target.files]));
$("token").addEventListener("change", () => loadModel());
const drop = $("drop");
drop.addEventListener("click", () => $("files").click());
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    $("files").click();
  }
});
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  handle([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || !f.type));
});
loadModel();
