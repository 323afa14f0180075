// DICOM for the input contract, as edgecxr's reader does it with pydicom: the first frame of uncompressed
// pixel data (Implicit or Explicit VR Little Endian, or Deflated Explicit VR Little Endian), unused high bits
// masked (signed values sign-extended), Rescale Slope/Intercept in float32, a LINEAR or LINEAR_EXACT VOI window
// by clipping, the 16-bit scaling rule, MONOCHROME1 inverted.
// Not supported (DicomUnsupported): compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE...), big
// endian, Modality or VOI LUT sequences, SIGMOID windows, palette and YBR colour, float pixel data.

export class DicomError extends Error {}
export class DicomUnsupported extends Error {}

const LONG_VR = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const TS = { implicit: "1.2.840.10008.1.2", explicit: "1.2.840.10008.1.2.1", deflated: "1.2.840.10008.1.2.1.99",
             big: "1.2.840.10008.1.2.2" };
const TAG = (g, e) => g * 65536 + e;
const WANTED = {
  [TAG(0x0008, 0x0060)]: "Modality", [TAG(0x0018, 0x5101)]: "ViewPosition",
  [TAG(0x0028, 0x0002)]: "SamplesPerPixel", [TAG(0x0028, 0x0004)]: "PhotometricInterpretation",
  [TAG(0x0028, 0x0006)]: "PlanarConfiguration", [TAG(0x0028, 0x0008)]: "NumberOfFrames",
  [TAG(0x0028, 0x0010)]: "Rows", [TAG(0x0028, 0x0011)]: "Columns", [TAG(0x0028, 0x0100)]: "BitsAllocated",
  [TAG(0x0028, 0x0101)]: "BitsStored", [TAG(0x0028, 0x0103)]: "PixelRepresentation",
  [TAG(0x0028, 0x1050)]: "WindowCenter", [TAG(0x0028, 0x1051)]: "WindowWidth",
  [TAG(0x0028, 0x1052)]: "RescaleIntercept", [TAG(0x0028, 0x1053)]: "RescaleSlope",
  [TAG(0x0028, 0x1056)]: "VOILUTFunction", [TAG(0x0028, 0x3000)]: "ModalityLUTSequence",
  [TAG(0x0028, 0x3010)]: "VOILUTSequence", [TAG(0x7fe0, 0x0010)]: "PixelData",
};
const US = new Set(["SamplesPerPixel", "PlanarConfiguration", "Rows", "Columns", "BitsAllocated", "BitsStored",
                    "PixelRepresentation"]);

export function isDicom(b, name) {
  return (b.length > 132 && b[128] === 68 && b[129] === 73 && b[130] === 67 && b[131] === 77) ||
         /\.(dcm|dicom)$/i.test(name || "");
}

class Reader {
  constructor(b, pos, explicit) { this.b = b; this.v = new DataView(b.buffer, b.byteOffset, b.byteLength); this.pos = pos; this.explicit = explicit; }
  more() { return this.pos + 8 <= this.b.length; }
  element() {
    const p = this.pos, g = this.v.getUint16(p, true), e = this.v.getUint16(p + 2, true);
    let vr = null, len, head;
    const item = g === 0xfffe;
    const vr2 = String.fromCharCode(this.b[p + 4], this.b[p + 5]);
    if (this.explicit && !item && /^[A-Z]{2}$/.test(vr2)) {
      vr = vr2;
      if (LONG_VR.has(vr)) { len = this.v.getUint32(p + 8, true); head = 12; } else { len = this.v.getUint16(p + 6, true); head = 8; }
    } else { len = this.v.getUint32(p + 4, true); head = 8; }
    this.pos = p + head;
    return { tag: TAG(g, e), vr, len, start: this.pos };
  }
  skipUndefined() { // items and nested data sets up to the sequence (or item) delimiter
    let depth = 1;
    while (this.more() && depth > 0) {
      const el = this.element();
      if (el.tag === TAG(0xfffe, 0xe0dd) || el.tag === TAG(0xfffe, 0xe00d)) { depth--; continue; }
      if (el.tag === TAG(0xfffe, 0xe000)) { if (el.len === 0xffffffff) depth++; else this.pos += el.len; continue; }
      if (el.len === 0xffffffff) { this.skipUndefined(); continue; }
      this.pos += el.len;
    }
  }
}

function text(b, start, len) {
  let s = "";
  for (let i = start; i < start + len; i++) s += String.fromCharCode(b[i]);
  return s.replace(/\0/g, "").trim();
}

async function inflateRaw(b) {
  const stream = new Blob([b]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function readDataset(b, pos, explicit) {
  const r = new Reader(b, pos, explicit), ds = {};
  while (r.more()) {
    const el = r.element();
    const name = WANTED[el.tag];
    if (el.len === 0xffffffff) {
      if (name === "PixelData") throw new DicomUnsupported("compressed (encapsulated) DICOM pixel data is not supported in the browser; export the image as uncompressed DICOM or PNG");
      if (name) ds[name] = true;
      r.skipUndefined();
      continue;
    }
    if (el.start + el.len > b.length) {
      if (name === "PixelData") throw new DicomError("corrupt or truncated DICOM (pixel data runs past the end)");
      break;
    }
    if (name === "PixelData") ds.PixelData = b.subarray(el.start, el.start + el.len);
    else if (name && US.has(name)) ds[name] = el.len >= 2 ? r.v.getUint16(el.start, true) : undefined;
    else if (name) ds[name] = el.vr === "SQ" || name.endsWith("Sequence") ? true : text(b, el.start, el.len);
    r.pos = el.start + el.len;
  }
  return ds;
}

/** Parse the file: {ds (the attributes above), syntax}. */
export async function parseDicom(b) {
  let pos = 0, syntax = TS.implicit;
  if (b.length > 132 && text(b, 128, 4) === "DICM") {
    pos = 132;
    const r = new Reader(b, pos, true);
    while (r.more() && r.v.getUint16(r.pos, true) === 0x0002) {
      const el = r.element();
      if (el.tag === TAG(0x0002, 0x0010)) syntax = text(b, el.start, el.len);
      r.pos = el.start + el.len;
    }
    pos = r.pos;
  } else if (b.length > 8 && /^[A-Z]{2}$/.test(String.fromCharCode(b[4], b[5]))) syntax = TS.explicit; // no preamble
  if (syntax === TS.big) throw new DicomUnsupported("big-endian DICOM is not supported in the browser");
  if (![TS.implicit, TS.explicit, TS.deflated].includes(syntax)) {
    throw new DicomUnsupported(`compressed DICOM (transfer syntax ${syntax}) is not supported in the browser; export the image as uncompressed DICOM or PNG`);
  }
  let data = b;
  if (syntax === TS.deflated) { data = await inflateRaw(b.subarray(pos)); pos = 0; }
  return { ds: readDataset(data, pos, syntax !== TS.implicit), syntax };
}

const first = (v) => parseFloat(String(v).split("\\")[0]);

/** -> {width, height, gray (Uint8Array), modality, viewPosition}, as edgecxr.data.images._decode_dicom. */
export async function decodeDicom(b, maxPixels = Infinity) {
  const { ds } = await parseDicom(b);
  if (!ds.PixelData) throw new DicomError("DICOM file has no pixel data");
  const rows = ds.Rows | 0, cols = ds.Columns | 0, spp = ds.SamplesPerPixel || 1, bits = ds.BitsAllocated || 16;
  if (!rows || !cols || rows * cols > maxPixels) throw new DicomError(`DICOM claims ${cols}x${rows} pixels; not a usable image`);
  const photometric = String(ds.PhotometricInterpretation || "").toUpperCase();
  if (!["MONOCHROME1", "MONOCHROME2", "RGB"].includes(photometric)) throw new DicomUnsupported(`DICOM photometric interpretation ${photometric || "(none)"} is not supported in the browser`);
  if (![8, 16, 32].includes(bits)) throw new DicomUnsupported(`DICOM with ${bits} bits allocated is not supported in the browser`);
  if (ds.ModalityLUTSequence || ds.VOILUTSequence) throw new DicomUnsupported("DICOM with a Modality or VOI LUT sequence is not supported in the browser");
  const stored = ds.BitsStored || bits, signed = ds.PixelRepresentation === 1, bytes = bits / 8;
  const n = rows * cols * spp;
  if (ds.PixelData.length < n * bytes) throw new DicomError("corrupt or truncated DICOM (less pixel data than Rows x Columns)");
  const dv = new DataView(ds.PixelData.buffer, ds.PixelData.byteOffset, n * bytes);
  const values = new Float32Array(rows * cols * spp);
  const shift = 32 - stored;
  for (let i = 0; i < n; i++) { // pydicom: unused high bits corrected by shifting (masked, or sign-extended)
    let v = bits === 8 ? dv.getUint8(i) : bits === 16 ? dv.getUint16(2 * i, true) : dv.getUint32(4 * i, true);
    v = signed ? (v << shift) >> shift : stored < 32 ? ((v << shift) >>> shift) : v >>> 0;
    values[i] = v;
  }
  let gray;
  const planar = ds.PlanarConfiguration === 1;
  let v = values;
  const slope0 = "RescaleSlope" in ds ? first(ds.RescaleSlope) : 1, intercept0 = "RescaleIntercept" in ds ? first(ds.RescaleIntercept) : 0;
  if (bits === 8 && !signed && spp === 1 && slope0 === 1 && intercept0 === 0 && !("WindowCenter" in ds)) {
    // the contract: unsigned 8-bit grey with no rescale and no window is taken as is, like an 8-bit PNG
    gray = Uint8Array.from(values);
    if (photometric === "MONOCHROME1") for (let i = 0; i < gray.length; i++) gray[i] = 255 - gray[i];
    const up = (s) => String(s || "").trim().toUpperCase();
    return { width: cols, height: rows, gray, modality: up(ds.Modality), viewPosition: up(ds.ViewPosition) };
  }
  if ("RescaleSlope" in ds && "RescaleIntercept" in ds) {
    const slope = Math.fround(first(ds.RescaleSlope)), intercept = Math.fround(first(ds.RescaleIntercept));
    for (let i = 0; i < v.length; i++) v[i] = Math.fround(Math.fround(v[i] * slope) + intercept);
  }
  const fn = String(ds.VOILUTFunction || "LINEAR").toUpperCase();
  if ("WindowCenter" in ds) {
    if (fn !== "LINEAR" && fn !== "LINEAR_EXACT") throw new DicomUnsupported(`DICOM VOI LUT function ${fn} is not supported in the browser`);
    let center = first(ds.WindowCenter), width = first(ds.WindowWidth);
    if (fn === "LINEAR") {
      if (width < 1) throw new DicomError(`Window Width ${width} must be at least 1 for a LINEAR window`);
      center -= 0.5; width -= 1;
    } else if (width <= 0) throw new DicomError(`Window Width ${width} must be above 0 for a LINEAR_EXACT window`);
    if (width === 0) for (let i = 0; i < v.length; i++) v[i] = v[i] > center ? 1 : 0;
    else {
      const lo = Math.fround(center - width / 2), hi = Math.fround(center + width / 2);
      for (let i = 0; i < v.length; i++) v[i] = v[i] < lo ? lo : v[i] > hi ? hi : v[i];
    }
  }
  if (spp >= 3) { // RGB: the mean of the three channels in float32
    const m = new Float32Array(rows * cols), plane = rows * cols;
    for (let i = 0; i < plane; i++) {
      const [r, g, bl] = planar ? [v[i], v[plane + i], v[2 * plane + i]] : [v[spp * i], v[spp * i + 1], v[spp * i + 2]];
      m[i] = Math.fround(Math.fround(Math.fround(r + g) + bl) / 3);
    }
    v = m;
  }
  gray = scaleUint8(v);
  if (photometric === "MONOCHROME1") for (let i = 0; i < gray.length; i++) gray[i] = 255 - gray[i];
  const up = (s) => String(s || "").trim().toUpperCase();
  return { width: cols, height: rows, gray, modality: up(ds.Modality), viewPosition: up(ds.ViewPosition) };
}

/** The contract's 16-bit rule: clip to the samples of rank k and N - 1 - k (k = (N - 1) // 2000, ascending), then
 *  rint((v - low) * float32(255 / (high - low))) in float32, round half to even. */
export function scaleUint8(v) {
  let low = Infinity, high = -Infinity;
  for (let i = 0; i < v.length; i++) { const x = v[i]; if (x < low) low = x; if (x > high) high = x; if (x !== x) { low = high = NaN; break; } }
  if (!Number.isFinite(low) || !Number.isFinite(high)) throw new DicomError("pixel values include NaN or infinite numbers; not a usable image");
  const k = Math.floor((v.length - 1) / 2000);
  if (k > 0) {
    const ranked = Float32Array.from(v).sort();
    low = ranked[k]; high = ranked[v.length - 1 - k];
  }
  const out = new Uint8Array(v.length);
  if (high <= low) return out;
  const f = Math.fround(255 / (high - low)), l = Math.fround(low);
  for (let i = 0; i < v.length; i++) {
    const c = v[i] < low ? low : v[i] > high ? high : v[i];
    out[i] = rintEven(Math.fround(Math.fround(c - l) * f));
  }
  return out;
}

export function rintEven(x) {
  const r = Math.round(x); // half up
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}
