// flexitok demo page: talks to the JSON API in flexitok/demo/app.py.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let imageId = null;
let requestSerial = 0; // only the newest reconstruction request may update the page

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

async function loadInfo() {
  info = await apiJSON(await fetch("/api/info"));
  const [h, w] = info.image_size;
  $("model-info").textContent =
    `model ${info.model}: ${w}x${h} images, up to ${info.n_registers} tokens of ${info.bits_per_token} bits ` +
    `(uploads up to ${(info.max_upload_bytes / 1048576).toFixed(1)} MiB)`;
  const k = $("k");
  k.max = info.n_registers;
  k.value = info.n_registers;
  $("k-value").textContent = k.value;
  for (const name of info.samples) {
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name;
    $("sample").appendChild(opt);
  }
  if (info.generator) setupGenerator(info.generator);
}

function setupGenerator(gen) {
  $("generate-panel").hidden = false;
  const gk = $("gen-k");
  gk.max = gen.max_tokens;
  gk.value = gen.max_tokens;
  $("gen-k-value").textContent = gk.value;
  if (gen.condition === "class") {
    $("class-controls").hidden = false;
    gen.class_names.forEach((name, i) => {
      const opt = document.createElement("option");
      opt.value = String(i);
      opt.textContent = `${i}: ${name}`;
      $("class").appendChild(opt);
    });
  } else if (gen.condition === "text") {
    $("prompt-controls").hidden = false;
  }
  gk.addEventListener("input", () => { $("gen-k-value").textContent = gk.value; });
  $("gen-button").addEventListener("click", generate);
}

async function generate() {
  const status = $("gen-status");
  const body = { k: Number($("gen-k").value), seed: Number($("gen-seed").value) || 0 };
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
  $("k").disabled = false;
  setStatus($("status"), out.note || "");
  return reconstruct();
}

async function upload(file) {
  setStatus($("status"), `uploading ${file.name}...`);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    await imageSelected(await apiJSON(await fetch("/api/images", { method: "POST", body: form })));
  } catch (e) {
    setStatus($("status"), e.message, true);
  }
}

async function pickSample(name) {
  if (!name) return;
  setStatus($("status"), `loading sample ${name}...`);
  try {
    await imageSelected(await apiJSON(await fetch(`/api/samples/${encodeURIComponent(name)}`, { method: "POST" })));
  } catch (e) {
    setStatus($("status"), e.message, true);
  }
}

async function reconstruct() {
  if (!imageId) return;
  const k = Number($("k").value);
  const seed = Number($("seed").value) || 0;
  const serial = ++requestSerial;
  setStatus($("status"), `decoding from ${k} tokens...`);
  try {
    const out = await apiJSON(await fetch(`/api/images/${imageId}/reconstruction?k=${k}&seed=${seed}`));
    if (serial !== requestSerial) return; // a newer slider position is on its way
    const img = $("reconstruction");
    img.src = out.image;
    img.dataset.k = String(out.k);
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
  clearTimeout(debounce);
  debounce = setTimeout(reconstruct, 150);
}

$("file").addEventListener("change", (ev) => { if (ev.target.files.length) upload(ev.target.files[0]); });
$("sample").addEventListener("change", (ev) => pickSample(ev.target.value));
$("k").addEventListener("input", scheduleReconstruct);
$("seed").addEventListener("change", scheduleReconstruct);
loadInfo().catch((e) => setStatus($("status"), `cannot reach the server: ${e.message}`, true));
