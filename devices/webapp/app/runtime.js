// The model in WebAssembly: LiteRT.js (@litertjs/core) for .tflite bundles, ONNX Runtime Web for .onnx
// bundles. Both are vendored into the site at build time (vendor/); nothing is fetched from elsewhere.
//
// LiteRT.js 2.5's public Tensor API knows float32, int32 and uint8 only, and refuses a buffer shaped
// [1, 224, 224, 3] for a model input declared [-1, 224, 224, 3]: an int8 bundle cannot load through it. The
// runtime underneath runs both; this file uses the package's own WebAssembly bindings (loadModel,
// compileModel, LiteRtTensorBuffer), pinned by the lockfile, with int8 buffers of the batch-1 shape.

const ELEMENT = { float32: 1, int32: 2, uint8: 3, int8: 9 };
const ARRAYS = { float32: Float32Array, int32: Int32Array, uint8: Uint8Array, int8: Int8Array };

/** Whether WebAssembly threads can run here (cross-origin isolated page, SharedArrayBuffer). */
export function threadsAvailable() {
  return self.crossOriginIsolated === true && typeof SharedArrayBuffer !== "undefined" && navigator.hardwareConcurrency > 1;
}

/** Threads for the model: `threads` if given, else half the logical CPUs (at most 4), as ONNX Runtime Web's
 * default: the page's own thread needs a core too (on 2 CPUs, 2 model threads measured slower than 1). */
export function threadCount(threads) {
  if (!threadsAvailable()) return 1;
  if (Number.isInteger(threads) && threads > 0) return Math.min(threads, navigator.hardwareConcurrency);
  return Math.max(1, Math.min(4, Math.floor(navigator.hardwareConcurrency / 2)));
}

export async function loadRuntime(cfg, { threads = null } = {}) {
  const n = threadCount(threads);
  const model = new Uint8Array(await (await fetch(cfg.bundle.model_file)).arrayBuffer());
  if (cfg.runtime.name === "litert.js") return loadLiteRt(cfg, model, n);
  if (cfg.runtime.name === "onnxruntime-web") return loadOrt(cfg, model, n);
  throw new Error(`no browser runtime for ${cfg.runtime.name}`);
}

async function loadLiteRt(cfg, model, n) {
  const L = await import("./vendor/litert/index.js");
  const dir = new URL("./vendor/litert/", location.href).href;
  let threads = n > 1;
  if (threads && !(await L.supportsFeature("relaxedSimd"))) threads = false; // LiteRT's threaded build needs it
  const lrt = await L.loadLiteRt(dir, { threads });
  const w = lrt.liteRtWasm, env = lrt.getDefaultEnvironment();
  const ptr = w._malloc(model.byteLength);
  w.HEAPU8.set(model, ptr);
  const wasmModel = w.loadModel(env.liteRtEnvironment, ptr, model.byteLength);
  const numThreads = threads ? Math.min(n, w.getThreadCount()) : 1;
  const compiled = await w.compileModel(env.liteRtEnvironment, wasmModel, {
    environment: env, accelerator: "wasm", cpuOptions: { numThreads }, gpuOptions: {}, webNNOptions: {} });
  const inDtype = cfg.input.dtype, outDtype = cfg.output.dtype;
  const shape = cfg.input_shape;
  const dims = new w.VectorInt32();
  for (const d of shape) dims.push_back(d);
  const layout = w.LiteRtLayout.create(dims);
  dims.delete();
  const inType = w.LiteRtRankedTensorType.create({ value: ELEMENT[inDtype] }, layout);
  layout.delete();
  const bytes = shape.reduce((a, b) => a * b, 1) * ARRAYS[inDtype].BYTES_PER_ELEMENT;
  return {
    name: "litert.js", version: cfg.runtime.version, threads: numThreads, accelerator: "XNNPACK",
    async run(x) {
      const buf = w.LiteRtTensorBuffer.createManaged(env.liteRtEnvironment, w.LiteRtTensorBufferType.HOST_MEMORY, inType, bytes);
      try {
        const p = buf.lock(w.LiteRtTensorBufferLockMode.WRITE);
        w.HEAPU8.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength), p);
        buf.unlock();
        const outs = await compiled.run(0, [buf]);
        try {
          const o = outs[0], q = o.lock(w.LiteRtTensorBufferLockMode.READ);
          const raw = w.HEAPU8.slice(q, q + o.packedSize());
          o.unlock();
          return new ARRAYS[outDtype](raw.buffer);
        } finally { for (const o of outs) o.delete(); }
      } finally { buf.delete(); }
    },
  };
}

async function loadOrt(cfg, model, n) {
  const ort = await import("./vendor/ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("./vendor/ort/", location.href).href;
  ort.env.wasm.numThreads = n;
  ort.env.logLevel = "error";
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const inName = session.inputNames[0], outName = session.outputNames[0];
  return {
    name: "onnxruntime-web", version: cfg.runtime.version, threads: ort.env.wasm.numThreads,
    accelerator: "CPU execution provider",
    async run(x) {
      const t = new ort.Tensor(cfg.input.dtype, x, cfg.input_shape);
      const res = await session.run({ [inName]: t });
      const y = res[outName];
      const data = y.data.slice();
      y.dispose?.(); t.dispose?.();
      return data;
    },
  };
}

/** The raw output -> probability of the positive class (edgecxr.runtimes.dequantize + modelinfo.to_prob). */
export function probability(raw, cfg) {
  const q = cfg.output.quantization, integer = !(raw instanceof Float32Array || raw instanceof Float64Array);
  const values = Array.from(raw, (v) => (q && integer ? (v - q.zero_point) * q.scale : Number(v)));
  const kind = cfg.output.kind || "sigmoid", pos = cfg.output.positive_index || 0;
  if (values.length === 1) return kind === "sigmoid" ? values[0] : 1 / (1 + Math.exp(-values[0]));
  if (kind === "logits") {
    const m = Math.max(...values), e = values.map((v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
    return e[pos] / s;
  }
  return values[pos];
}
