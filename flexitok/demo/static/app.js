// flexitok demo page: talks to the JSON API in flexitok/demo/app.py.
// It opens on the first model's first sample, already reconstructed, with the whole coarse-to-fine strip.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let imageId = null;
let requestSerial = 0; // only the newest reconstruction request may update the page
let stripSerial = 0;   // likewise for the strip
let imageSerial = 0;   // and for the image selection (a model switch may overtake a slow sample)

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function apiJSON(response) {
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

const modelQuery = () => `model=${encodeURIComponent(info.model)}`;

function fillSelect(select, values, placeholder) {
  select.replaceChildren();
  if (placeholder) {
    const opt = document.createElement("option");
    opt.value = "";
    opt.textContent = placeholder;
    select.appendChild(opt);
  }
  for (const [value, text] of values) {
    const opt = document.createElement("option");
    opt.value = value;
    opt.textContent = text;
    select.appendChild(opt);
  }
}

async function loadInfo(modelName) {
  const query = modelName ? `?model=${encodeURIComponent(modelName)}` : "";
  info = await apiJSON(await fetch(`/api/info${query}`));
  const [h, w] = info.image_size;
  $("model-info").textContent =
    `model ${info.model}: ${w}x${h} images, up to ${info.n_registers} tokens of ${info.bits_per_token} bits ` +
    `(uploads up to ${(info.max_upload_bytes / 1048576).toFixed(1)} MiB)`;
  const picker = $("model");
  if (picker.options.length !== info.models.length) fillSelect(picker, info.models.map((m) => [m, m]));
  picker.value = info.model;
  $("model-picker").hidden = info.models.length < 2;
  const k = $("k");
  k.max = info.n_registers;
  k.value = info.n_registers;
  k.disabled = true;
  $("k-value").textContent = k.value;
  fillSelect($("sample"), info.samples.map((s) => [s, s]), "(choose)");
  imageId = null;
  for (const id of ["original", "reconstruction"]) {
    $(id).removeAttribute("src");
    delete $(id).dataset.k;
  }
  $("recon-caption").textContent = "reconstruction";
  $("strip").replaceChildren();
  setupGenerator(info.generator);
  // Open on something: the first sample, reconstructed.
  if (info.samples.length) {
    $("sample").value = info.samples[0];
    await pickSample(info.samples[0]);
  }
}

function setupGenerator(gen) {
  $("generate-panel").hidden = !gen;
  $("class-controls").hidden = true;
  $("prompt-controls").hidden = true;
  $("generated").removeAttribute("src");
  delete $("generated").dataset.k;
  if (!gen) return;
  const gk = $("gen-k");
  gk.max = gen.max_tokens;
  gk.value = gen.max_tokens;
  $("gen-k-value").textContent = gk.value;
  if (gen.condition === "class") {
    $("class-controls").hidden = false;
    fillSelect($("class"), gen.class_names.map((name, i) => [String(i), `${i}: ${name}`]));
  } else if (gen.condition === "text") {
    $("prompt-controls").hidden = false;
  }
}

async function generate() {
  const status = $("gen-status");
  const body = { model: info.model, k: Number($("gen-k").value), seed: Number($("gen-seed").value) || 0 };
  if (info.generator.condition === "class") body.class_index = Number($("class").value);
  if (info.generator.condition === "text") body.prompt = $("prompt").value;
  setStatus(status, "generating...");
  try {
    const out = await apiJSON(await fetch("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }));
    const img = $("generated");
    img.src = out.image;
    img.dataset.k = String(out.k);
    $("gen-caption").textContent = `generated from ${out.k} tokens`;
    setStatus(status, "");
  } catch (e) {
    setStatus(status, e.message, true);
  }
}

function imageSelected(out) {
  imageId = out.id;
  $("original").src = out.original;
  $("reconstruction").dataset.image = out.id;
  $("k").disabled = false;
  setStatus($("status"), out.note || "");
  return Promise.all([reconstruct(), loadStrip()]);
}

async function select(request, what) {
  const serial = ++imageSerial;
  setStatus($("status"), `loading ${what}...`);
  try {
    const out = await apiJSON(await request);
    if (serial === imageSerial && out.model === info.model) await imageSelected(out);
  } catch (e) {
    if (serial === imageSerial) setStatus($("status"), e.message, true);
  }
}

function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return select(fetch(`/api/images?${modelQuery()}`, { method: "POST", body: form }), file.name);
}

function pickSample(name) {
  if (!name) return Promise.resolve();
  return select(fetch(`/api/samples/${encodeURIComponent(name)}?${modelQuery()}`, { method: "POST" }), `sample ${name}`);
}

function markCurrent() {
  const k = $("k").value;
  for (const fig of $("strip").children) fig.classList.toggle("current", fig.dataset.k === k);
}

async function loadStrip() {
  if (!imageId) return;
  const id = imageId;
  const seed = Number($("seed").value) || 0;
  const serial = ++stripSerial;
  try {
    const out = await apiJSON(await fetch(`/api/images/${id}/strip?seed=${seed}`));
    if (serial !== stripSerial || id !== imageId) return;
    const figures = out.reconstructions.map((rec) => {
      const fig = document.createElement("figure");
      fig.dataset.k = String(rec.k);
      fig.title = `show k = ${rec.k}`;
      const img = document.createElement("img");
      img.src = rec.image;
      img.alt = `reconstruction from ${rec.k} tokens`;
      img.dataset.k = String(rec.k);
      const cap = document.createElement("figcaption");
      cap.textContent = `k=${rec.k}\n${rec.psnr.toFixed(1)} dB, ${rec.ftok_bytes} B`;
      fig.append(img, cap);
      fig.addEventListener("click", () => {
        $("k").value = String(rec.k);
        scheduleReconstruct();
      });
      return fig;
    });
    $("strip").replaceChildren(...figures);
    markCurrent();
  } catch (e) {
    if (serial === stripSerial) setStatus($("status"), e.message, true);
  }
}

async function reconstruct() {
  if (!imageId) return;
  const id = imageId;
  const k = Number($("k").value);
  const seed = Number($("seed").value) || 0;
  const serial = ++requestSerial;
  setStatus($("status"), `decoding from ${k} tokens...`);
  try {
    const out = await apiJSON(await fetch(`/api/images/${id}/reconstruction?k=${k}&seed=${seed}`));
    if (serial !== requestSerial || id !== imageId) return; // a newer slider position or image is on its way
    const img = $("reconstruction");
    img.src = out.image;
    img.dataset.k = String(out.k);
    img.dataset.image = id;
    $("recon-caption").textContent =
      `${out.k} tokens = ${out.ftok_bytes} bytes as .ftok, PSNR ${out.psnr.toFixed(2)} dB`;
    setStatus($("status"), "");
  } catch (e) {
    if (serial === requestSerial) setStatus($("status"), e.message, true);
  }
}

let debounce = null;
function scheduleReconstruct() {
  $("k-value").textContent = $("k").value;
  markCurrent();
  clearTimeout(debounce);
  debounce = setTimeout(reconstruct, 150);
}

function reportError(e) { setStatus($("status"), `cannot reach the server: ${e.message}`, true); }

$("model").addEventListener("change", (ev) => loadInfo(ev.target.value).catch(reportError));
$("file").addEventListener("change", (ev) => { if (ev.target.files.length) upload(ev.target.files[0]); });
$("sample").addEventListener("change", (ev) => pickSample(ev.target.value));
$("k").addEventListener("input", scheduleReconstruct);
$("seed").addEventListener("change", () => { scheduleReconstruct(); loadStrip(); });
$("gen-k").addEventListener("input", () => { $("gen-k-value").textContent = $("gen-k").value; });
$("gen-button").addEventListener("click", generate);
loadInfo().catch(reportError);
