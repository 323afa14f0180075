// The page: pick images, classify them in this browser with the bundle's model, show probability, decision,
// intended use and latency. Nothing is uploaded: files are read with the File API and never sent anywhere.
//
// Test hook (used by edgecxr's tests and benchmarks/web_parity.py):
//   await window.edgecxr.ready                      -> {load_ms, runtime}
//   await window.edgecxr.classify(bytes, name, {stages: true | [STAGE, ...]})
//        -> {probability, decision, label, timings, warning, note, stages: {STAGE: {shape, dtype, b64}}}
//   window.edgecxr.offline                          {files, added} once the offline copy is complete
//   window.edgecxr.results                          every result of the file picker, in order
import { stages as runStages, ImageError } from "./contract.js";
import { loadRuntime, probability, threadsAvailable } from "./runtime.js";

const $ = (id) => document.getElementById(id);
const T0 = performance.now();
const results = [];
let cfg = null, rt = null, offline = null;

async function boot() {
  cfg = await (await fetch("config.json")).json();
  showModel();
  const params = new URLSearchParams(location.search);
  const threads = params.has("threads") ? Math.max(1, parseInt(params.get("threads"), 10) || 1) : null; // ?threads=N
  const t = performance.now();
  rt = await loadRuntime(cfg, { threads });
  const t1 = performance.now(); // one call on a blank input: the runtime prepares its kernels before the first image
  const n = cfg.input_shape.reduce((a, b) => a * b, 1);
  await rt.run(new ({ int8: Int8Array, uint8: Uint8Array }[cfg.input.dtype] || Float32Array)(n));
  const load = { load_ms: performance.now() - t, warmup_ms: performance.now() - t1, since_navigation_ms: performance.now(),
                 runtime: runtimeInfo() };
  $("runtime").textContent = `${rt.name} ${rt.version}, WebAssembly (${rt.accelerator}), ${rt.threads} thread${rt.threads > 1 ? "s" : ""}` +
    (threadsAvailable() ? "" : " (more threads need a cross-origin isolated page: edgecxr serve --app sets the headers)");
  $("loadtime").textContent = `model ready ${(load.since_navigation_ms / 1000).toFixed(2)} s after the page opened`;
  $("picker").disabled = false;
  $("status").textContent = "Ready. Pick one or more images.";
  registerWorker();
  return load;
}

function runtimeInfo() {
  return { name: rt.name, version: rt.version, threads: rt.threads, accelerator: rt.accelerator,
           cross_origin_isolated: self.crossOriginIsolated === true, user_agent: navigator.userAgent };
}

function showModel() {
  const b = cfg.bundle;
  $("use").textContent = cfg.intended_use;
  $("domain").textContent = `Accepted inputs: ${cfg.domain_text}.`;
  $("target").textContent = `${b.target} (model SHA-256 ${b.model_sha256.slice(0, 16)}…, bundle digest ${b.digest.slice(0, 16)}…)`;
  $("threshold").textContent = `${cfg.labels[1]} when probability ≥ ${cfg.threshold.toFixed(4)} (the bundle's threshold, chosen on validation)`;
  $("edgecxr").textContent = `built by edgecxr ${cfg.edgecxr} on ${cfg.built}`;
}

async function registerWorker() {
  const el = $("offline");
  if (!("serviceWorker" in navigator) || !self.isSecureContext) {
    el.textContent = "Offline: this address is not a secure context (https or localhost), so the browser keeps no " +
      "offline copy of the page here. It still never uploads anything; to use it without a network, open it from " +
      "https or localhost (edgecxr serve --app behind TLS, or the folder on a local web server).";
    return;
  }
  try {
    await navigator.serviceWorker.register("sw.js");
    const reg = await navigator.serviceWorker.ready;
    const used = [location.href, ...performance.getEntriesByType("resource").map((e) => e.name)];
    const done = new Promise((resolve) => navigator.serviceWorker.addEventListener("message", (e) => {
      if (e.data?.type === "cached") resolve(e.data);
    }));
    navigator.serviceWorker.startMessages(); // addEventListener alone leaves the worker's messages queued
    reg.active.postMessage({ type: "cache", urls: used });
    const r = await Promise.race([done, new Promise((resolve) => setTimeout(() => resolve(null), 120000))]);
    if (!r || r.failed) {
      el.textContent = "The offline copy is incomplete (the worker did not confirm every file); the page works while " +
        "this address is reachable.";
      return;
    }
    offline = r;
    el.textContent = `Works offline: the page, the model and the runtime (${r.files} files) are kept on this device; ` +
      "reopen this address without a network and it still classifies.";
  } catch (e) {
    el.textContent = `No offline copy (${e.message}); the page works while this address is reachable.`;
  }
}

/** One image, start to end. stages: also return every stage array (for `edgecxr device conform`). */
async function classify(bytes, name, { stages = false } = {}) {
  await ready;
  if (!(bytes instanceof Uint8Array)) bytes = new Uint8Array(bytes);
  const t0 = performance.now();
  const s = await runStages(bytes, name, cfg);
  const x = s.stages.quantized ? s.stages.quantized.data : s.stages.input.data;
  const t1 = performance.now();
  const raw = await rt.run(x);
  const infer_ms = performance.now() - t1;
  const p = probability(raw, cfg);
  const decision = p >= cfg.threshold ? 1 : 0;
  const total_ms = performance.now() - t0;
  const out = { name, probability: p, decision, label: cfg.labels[decision], warning: s.warning,
                note: s.decoded.note || null, decoder: s.decoded.decoder, jpeg_scale: s.decoded.scale,
                timings: { decode_ms: s.decode_ms, preprocess_ms: s.preprocess_ms, infer_ms, total_ms } };
  if (stages) { // typed arrays as base64 of their little-endian bytes: {shape, dtype, b64}
    const st = {};
    const put = (k, shape, a) => { st[k] = { shape, dtype: DTYPES[a.constructor.name], b64: base64(a) }; };
    for (const [k, v] of Object.entries(s.stages)) if (stages === true || stages.includes(k)) put(k, v.shape, v.data);
    if (stages === true) {
      put("output", [1, raw.length], raw);
      put("probability", [], new Float64Array([p]));
      put("decision", [], new Int32Array([decision]));
    }
    out.stages = st;
  }
  out.preview = s.stages.resized.data;
  return out;
}

const DTYPES = { Uint8Array: "uint8", Int8Array: "int8", Uint16Array: "uint16", Int32Array: "int32", Float32Array: "float32",
                 Float64Array: "float64" };
function base64(a) {
  const b = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

function row(r) {
  const tr = document.createElement("tr");
  const cells = r.error
    ? [r.name, "—", "not classified", "—", r.error]
    : [r.name, r.probability.toFixed(4), r.label, `${r.timings.total_ms.toFixed(0)} ms (model ${r.timings.infer_ms.toFixed(0)} ms)`,
       [r.warning, r.note].filter(Boolean).join("; ")];
  cells.forEach((c, i) => {
    const td = document.createElement("td");
    td.textContent = c;
    if (i === 2 && !r.error) td.className = r.decision ? "pos" : "neg";
    tr.appendChild(td);
  });
  return tr;
}

function preview(px) {
  const size = cfg.preprocess.size, c = $("preview"), ctx = c.getContext("2d");
  c.width = c.height = size;
  const img = ctx.createImageData(size, size);
  for (let i = 0; i < px.length; i++) { img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = px[i]; img.data[4 * i + 3] = 255; }
  ctx.putImageData(img, 0, 0);
}

async function onFiles(files) {
  const list = Array.from(files);
  $("picker").disabled = true;
  for (const [i, f] of list.entries()) {
    $("status").textContent = `Classifying ${i + 1} of ${list.length}: ${f.name}`;
    let r;
    try {
      r = await classify(new Uint8Array(await f.arrayBuffer()), f.name);
      preview(r.preview);
      const big = $("result");
      big.textContent = `${r.label}: probability ${r.probability.toFixed(3)} (threshold ${cfg.threshold.toFixed(3)}), ` +
        `${r.timings.total_ms.toFixed(0)} ms`;
      big.className = r.decision ? "pos" : "neg";
    } catch (e) {
      r = { name: f.name, error: e instanceof ImageError ? e.message : `${e.name}: ${e.message}` };
    }
    delete r.preview;
    results.push(r);
    $("rows").prepend(row(r));
  }
  const failed = results.slice(-list.length).filter((r) => r.error).length;
  $("status").textContent = `Done: ${list.length - failed} of ${list.length} image${list.length > 1 ? "s" : ""} classified ` +
    `in this browser${failed ? ` (${failed} could not be classified: see the notes)` : ""}; nothing was uploaded.`;
  $("picker").disabled = false;
  $("picker").value = "";
}

const ready = boot().catch((e) => {
  $("status").textContent = `The model could not be loaded: ${e.message || e}`;
  throw e;
});
window.edgecxr = { ready, classify, results, get config() { return cfg; }, get runtime() { return rt && runtimeInfo(); },
                   get offline() { return offline; }, opened_ms: T0 };

$("picker").addEventListener("change", (e) => onFiles(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (!$("picker").disabled) onFiles(e.dataTransfer.files);
});
