// edgecxr's input contract in JavaScript: every stage from file bytes to the model's input tensor, as the
// bundle's manifest (`input_contract`) writes it and edgecxr/data/contract.py executes it. The stages are the ones
// `edgecxr device conform` checks: decoded, cropped, equalized, resized, input, quantized.
import { decodeJpeg, jpegInfo, JpegUnsupported } from "./jpeg.js";
import { decodePng, isPng, pngInfo } from "./png.js";
import { decodeDicom, isDicom, rintEven, scaleUint8 } from "./dicom.js";

export const MAX_PIXELS = 64_000_000; // edgecxr.data.images: above it a file is refused as a decompression bomb
export const MAX_BYTES = 256 * 1024 * 1024;

export class ImageError extends Error {}

// -- decoded: upright 8-bit gray -----------------------------------------------------------------------
/** (19595 R + 38470 G + 7471 B + 32768) >> 16 over interleaved RGB (channels 3) or RGBA (4, composited on black). */
export function toGray(data, n, channels) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let r = data[channels * i], g = data[channels * i + 1], b = data[channels * i + 2];
    if (channels === 4) { // Pillow's alpha_composite over opaque black: (c * a + 128 + ((c * a + 128) >> 8)) >> 8
      const a = data[4 * i + 3];
      const t = (c) => { const x = c * a + 128; return (x + (x >> 8)) >> 8; };
      r = t(r); g = t(g); b = t(b);
    }
    out[i] = (19595 * r + 38470 * g + 7471 * b + 32768) >>> 16;
  }
  return out;
}

/** TIFF orientation 1-8 -> upright (Pillow's exif_transpose). */
export function exifTranspose(px, w, h, orientation) {
  if (!(orientation >= 2 && orientation <= 8)) return { data: px, width: w, height: h };
  const swap = orientation >= 5;
  const W = swap ? h : w, H = swap ? w : h, out = new Uint8Array(w * h);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let sx, sy; // the source pixel of output (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; sy = y; break;               // mirror left-right
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;       // rotate 180
        case 4: sx = x; sy = h - 1 - y; break;               // mirror top-bottom
        case 5: sx = y; sy = x; break;                       // transpose
        case 6: sx = y; sy = h - 1 - x; break;               // rotate 90 clockwise
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;       // transverse
        default: sx = w - 1 - y; sy = x; break;              // 8: rotate 90 counter-clockwise
      }
      out[y * W + x] = px[sy * w + sx];
    }
  }
  return { data: out, width: W, height: H };
}

/** The reduced-DCT factor a W x H JPEG is decoded at. */
export function jpegScale(width, height, draft) {
  const ratio = Math.min(Math.floor(width / draft), Math.floor(height / draft));
  return [8, 4, 2, 1].find((s) => ratio >= s || s === 1);
}

function sniff(bytes, name) { // in edgecxr's order: DICOM by its preamble or a .dcm / .dicom name first
  if (isDicom(bytes, name)) return "dicom";
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "jpeg";
  if (isPng(bytes)) return "png";
  return "other";
}

/**
 * File bytes -> {gray, width, height, sourceWidth, sourceHeight, format, decoder, scale, orientation,
 * modality, viewPosition}. decoder "contract" for the page's own JPEG/PNG/DICOM decoders, "browser" when the
 * browser decoded it (another format, or a JPEG kind the page's decoder does not handle): then `decoded` may
 * differ from edgecxr's and the page says so.
 */
export async function decode(bytes, name, draft) {
  if (!bytes.length) throw new ImageError(`${name}: file is empty`);
  if (bytes.length > MAX_BYTES) throw new ImageError(`${name}: file is larger than ${MAX_BYTES >> 20} MB`);
  const format = sniff(bytes, name);
  try {
    if (format === "dicom") {
      const d = await decodeDicom(bytes, MAX_PIXELS);
      return { gray: d.gray, width: d.width, height: d.height, sourceWidth: d.width, sourceHeight: d.height, format,
               decoder: "contract", scale: 1, orientation: 1, modality: d.modality, viewPosition: d.viewPosition };
    }
    if (format === "png") {
      const { width, height } = pngInfo(bytes);
      if (width * height > MAX_PIXELS) throw tooLarge(name, width, height);
      const p = await decodePng(bytes, MAX_PIXELS);
      const n = p.width * p.height;
      let gray;
      if (p.mode === "I;16") gray = scaleUint8(p.data);
      else if (p.mode === "L") gray = p.data;
      else if (p.mode === "LA") {
        const rgba = new Uint8Array(4 * n);
        for (let i = 0; i < n; i++) { rgba[4 * i] = rgba[4 * i + 1] = rgba[4 * i + 2] = p.data[2 * i]; rgba[4 * i + 3] = p.data[2 * i + 1]; }
        gray = toGray(rgba, n, 4);
      } else gray = toGray(p.data, n, p.channels);
      const up = exifTranspose(gray, p.width, p.height, p.orientation);
      return { gray: up.data, width: up.width, height: up.height, sourceWidth: width, sourceHeight: height, format,
               decoder: "contract", scale: 1, orientation: p.orientation };
    }
    if (format === "jpeg") {
      const info = jpegInfo(bytes);
      if (info.width * info.height > MAX_PIXELS) throw tooLarge(name, info.width, info.height);
      const scale = jpegScale(info.width, info.height, draft);
      try {
        const j = decodeJpeg(bytes, scale);
        const gray = j.channels === 1 ? j.data : toGray(j.data, j.width * j.height, 3);
        const up = exifTranspose(gray, j.width, j.height, j.orientation);
        return { gray: up.data, width: up.width, height: up.height, sourceWidth: info.width, sourceHeight: info.height,
                 format, decoder: "contract", scale, orientation: j.orientation };
      } catch (e) {
        if (!(e instanceof JpegUnsupported)) throw e;
        return await browserDecode(bytes, name, format, e.message);
      }
    }
    return await browserDecode(bytes, name, format, "not JPEG, PNG or DICOM");
  } catch (e) {
    if (e instanceof ImageError) throw e;
    throw new ImageError(`${name}: ${e.message || e}`);
  }
}

function tooLarge(name, w, h) {
  return new ImageError(`${name}: image claims ${w}x${h} pixels, above the ${MAX_PIXELS.toLocaleString("en")} limit; ` +
                        "resize it before classifying");
}

async function browserDecode(bytes, name, format, why) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), { colorSpaceConversion: "none", premultiplyAlpha: "none",
                                                           imageOrientation: "from-image" });
  } catch (e) {
    throw new ImageError(`${name}: not a readable image (JPEG, PNG or DICOM expected)`);
  }
  const { width, height } = bitmap;
  if (width * height > MAX_PIXELS) throw new ImageError(`${name}: image is larger than the ${MAX_PIXELS.toLocaleString("en")}-pixel limit`);
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { colorSpace: "srgb" });
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, width, height); // transparency over black
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const gray = toGray(rgba, width * height, 4);
  return { gray, width, height, sourceWidth: width, sourceHeight: height, format, decoder: "browser", scale: 1,
           orientation: 1, note: `decoded by the browser (${why}): not edgecxr's decoder, the pixels may differ slightly` };
}

// -- the input domain (edgecxr/data/domain.py) ----------------------------------------------------------------
/** Throws ImageError outside the bundle's domain; returns a warning or null. */
export function checkDomain(d, name, domain, minRange) {
  const { sourceWidth: w, sourceHeight: h } = d;
  if (Math.min(w, h) < domain.min_side) {
    throw new ImageError(`${name}: image is ${w}x${h} px, below the ${domain.min_side} px minimum on the short side the model accepts`);
  }
  const hist = histogram(d.gray);
  let low = 0, high = 255;
  while (low < 256 && !hist[low]) low++;
  while (high >= 0 && !hist[high]) high--;
  if (low === high) throw new ImageError(`${name}: every pixel is ${low} (a constant or fully transparent image); not an X-ray`);
  const total = d.gray.length;
  const pct = (q) => { let c = 0; for (let i = 0; i < 256; i++) { c += hist[i]; if (c >= q * total) return i; } return 255; };
  const p1 = pct(0.01), p99 = pct(0.99);
  if (p99 - p1 < minRange) {
    throw new ImageError(`${name}: 98% of the pixels lie within grey levels ${p1}..${p99}, fewer than the ${minRange} levels an X-ray spans (a nearly constant or nearly transparent image); not an X-ray`);
  }
  if (d.modality && !domain.modalities.includes(d.modality)) {
    throw new ImageError(`${name}: DICOM modality ${d.modality}; the model was validated on ${domain.modalities.join(" and ")} chest radiographs only`);
  }
  if (d.viewPosition && domain.lateral_views.includes(d.viewPosition)) {
    return `${name}: lateral view (DICOM ViewPosition ${d.viewPosition}); the model was validated on frontal chest X-rays`;
  }
  return null;
}

function histogram(px) {
  const h = new Float64Array(256);
  for (let i = 0; i < px.length; i++) h[px[i]]++;
  return h;
}

// -- cropped, equalized, resized ------------------------------------------------------------------------
export function crop(px, w, h, box) {
  const [top, bottom, left, right] = box;
  const r0 = rintEven(top * h), r1 = rintEven(bottom * h), c0 = rintEven(left * w), c1 = rintEven(right * w);
  const W = Math.max(0, c1 - c0), H = Math.max(0, r1 - r0), out = new Uint8Array(W * H);
  for (let y = 0; y < H; y++) out.set(px.subarray((r0 + y) * w + c0, (r0 + y) * w + c1), y * W);
  return { data: out, width: W, height: H };
}

/** The contract's equalization table (Pillow's formula, not OpenCV's equalizeHist). */
export function equalize(px) {
  const h = histogram(px);
  let used = 0, last = -1;
  for (let i = 0; i < 256; i++) if (h[i]) { used++; last = i; }
  if (used <= 1) return px;
  const step = Math.floor((px.length - h[last]) / 255);
  if (step === 0) return px;
  const lut = new Uint8Array(256);
  let before = 0;
  for (let i = 0; i < 256; i++) {
    lut[i] = Math.min(Math.floor((Math.floor(step / 2) + before) / step), 255);
    before += h[i];
  }
  const out = new Uint8Array(px.length);
  for (let i = 0; i < px.length; i++) out[i] = lut[px[i]];
  return out;
}

const KERNELS = {
  bilinear: [(t) => { t = Math.abs(t); return t < 1 ? 1 - t : 0; }, 1],
  bicubic: [(t) => {
    t = Math.abs(t); const a = -0.5;
    return t < 1 ? ((a + 2) * t - (a + 3)) * t * t + 1 : t < 2 ? (((t - 5) * t + 8) * t - 4) * a : 0;
  }, 2],
  lanczos: [(t) => {
    const sinc = (x) => { x *= Math.PI; return x === 0 ? 1 : Math.sin(x) / x; };
    return t > -3 && t < 3 ? sinc(t) * sinc(t / 3) : 0;
  }, 3],
};

/** Per output pixel: first input index and 22-bit fixed-point weights (edgecxr.data.contract.resize_weights). */
export function resizeWeights(inSize, outSize, kernel) {
  const [fn, support0] = KERNELS[kernel];
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = support0 * filterscale;
  const taps = Math.ceil(support) * 2 + 1, ss = 1 / filterscale;
  const first = new Int32Array(outSize), weights = new Float64Array(outSize * taps);
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    const lo = Math.max(Math.trunc(center - support + 0.5), 0), hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    const w = new Float64Array(taps);
    let total = 0;
    for (let k = 0; k < taps; k++) {
      const j = lo + k;
      w[k] = j < hi ? fn((j - center + 0.5) * ss) : 0;
      total += w[k];
    }
    for (let k = 0; k < taps; k++) {
      const v = total !== 0 ? w[k] / total : w[k];
      weights[i * taps + k] = Math.trunc((v < 0 ? -0.5 : 0.5) + v * 4194304);
    }
    first[i] = lo;
  }
  return { first, weights, taps };
}

function resizeAxis(px, rows, cols, outSize, kernel) { // along each row: (rows, cols) -> (rows, outSize)
  const { first, weights, taps } = resizeWeights(cols, outSize, kernel);
  const out = new Uint8Array(rows * outSize);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let i = 0; i < outSize; i++) {
      let acc = 2097152;
      for (let k = 0; k < taps; k++) {
        const wk = weights[i * taps + k];
        if (wk !== 0) acc += px[base + Math.min(first[i] + k, cols - 1)] * wk;
      }
      const v = Math.floor(acc / 4194304);
      out[r * outSize + i] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
  }
  return out;
}

function transpose(px, rows, cols) {
  const out = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = px[r * cols + c];
  return out;
}

function nearestIndex(n, size) {
  const scale = n / size, idx = new Int32Array(size);
  let x = scale * 0.5;
  for (let i = 0; i < size; i++) { idx[i] = Math.min(Math.trunc(x), n - 1); x += scale; }
  return idx;
}

/** uint8 (h, w) -> (size, size): horizontal pass first, each pass rounded to uint8 (identity at that size). */
export function resize(px, w, h, size, kernel = "bilinear") {
  if (w === size && h === size) return px;
  if (kernel === "nearest") {
    const ri = nearestIndex(h, size), ci = nearestIndex(w, size), out = new Uint8Array(size * size);
    for (let y = 0; y < size; y++) for (let x = 0; x < size; x++) out[y * size + x] = px[ri[y] * w + ci[x]];
    return out;
  }
  let out = px, cols = w;
  if (w !== size) { out = resizeAxis(out, h, w, size, kernel); cols = size; }
  if (h !== size) out = transpose(resizeAxis(transpose(out, h, cols), cols, h, size, kernel), cols, size);
  return out;
}

// -- input, quantized ------------------------------------------------------------------------------------
/** The model's tensor from the resized pixels through a 256-entry table, NHWC or NCHW. */
export function tensor(resized, table, size, channels, nchw, ArrayType) {
  const n = size * size, out = new ArrayType(n * channels);
  for (let i = 0; i < n; i++) {
    const v = table[resized[i]];
    for (let c = 0; c < channels; c++) out[nchw ? c * n + i : i * channels + c] = v;
  }
  return out;
}

/** Every pixel stage of the contract for one file (model stages are added by the runtime). */
export async function stages(bytes, name, cfg) {
  const pre = cfg.preprocess, t0 = performance.now();
  const d = await decode(bytes, name, cfg.draft_size);
  const t1 = performance.now();
  const warning = checkDomain(d, name, cfg.domain, cfg.min_range);
  const out = { decoded: { data: d.gray, shape: [d.height, d.width] } };
  let px = d.gray, w = d.width, h = d.height;
  if (pre.crop) {
    const c = crop(px, w, h, pre.crop);
    px = c.data; w = c.width; h = c.height;
    out.cropped = { data: px, shape: [h, w] };
  }
  if (pre.equalize) { px = equalize(px); out.equalized = { data: px, shape: [h, w] }; }
  px = resize(px, w, h, pre.size, pre.interpolation);
  out.resized = { data: px, shape: [pre.size, pre.size] };
  const shape = cfg.nchw ? [1, pre.channels, pre.size, pre.size] : [1, pre.size, pre.size, pre.channels];
  out.input = { data: tensor(px, cfg.input_table, pre.size, pre.channels, cfg.nchw, Float32Array), shape };
  if (cfg.quantized_table) {
    const Q = cfg.input.dtype === "uint8" ? Uint8Array : Int8Array;
    out.quantized = { data: tensor(px, cfg.quantized_table, pre.size, pre.channels, cfg.nchw, Q), shape };
  }
  const t2 = performance.now();
  return { stages: out, decoded: d, warning, decode_ms: t1 - t0, preprocess_ms: t2 - t1 };
}
