// A PNG decoder giving the samples Pillow gives (its modes L, I;16, RGB, RGBA, LA, P, 1), for the input
// contract: 16-bit grey stays 16-bit (scaled later by the rank rule), 16-bit colour keeps its high byte, a palette with
// transparency becomes RGBA, tRNS of grey and RGB images is ignored. Inflating uses the browser's
// DecompressionStream (zlib), so decodePng is async. Interlaced (Adam7) images are supported.

export class PngError extends Error {}

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

export function isPng(b) {
  return b.length >= 8 && SIGNATURE.every((v, i) => b[i] === v);
}

function u32(b, i) { return ((b[i] << 24) >>> 0) + ((b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]); }

/** The header: {width, height, depth, colorType, interlace}, without inflating anything. */
export function pngInfo(b) {
  if (!isPng(b) || b.length < 33) throw new PngError("not a PNG file");
  return { width: u32(b, 16), height: u32(b, 20), depth: b[24], colorType: b[25], interlace: b[28] };
}

async function inflate(data) {
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate"));
  try {
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch (e) {
    throw new PngError(`corrupt or truncated PNG (${e.message || e})`);
  }
}

function exifOrientation(b) {
  // eXIf payload: a TIFF header, IFD0 entries of 12 bytes, tag 0x0112 (SHORT)
  if (b.length < 8) return 1;
  const le = b[0] === 0x49;
  const r16 = (i) => (le ? b[i] | (b[i + 1] << 8) : (b[i] << 8) | b[i + 1]);
  const r32 = (i) => (le ? (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16)) + b[i + 3] * 2 ** 24 : u32(b, i));
  const ifd = r32(4);
  if (ifd + 2 > b.length) return 1;
  for (let k = 0, n = r16(ifd); k < n; k++) {
    const e = ifd + 2 + 12 * k;
    if (e + 12 > b.length) break;
    if (r16(e) === 0x0112) return r16(e + 8);
  }
  return 1;
}

const CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/**
 * -> {width, height, mode: "L" | "I;16" | "RGB" | "RGBA" | "LA", channels, data (Uint8Array, or Uint16Array for
 * I;16), orientation}
 */
export async function decodePng(b, maxPixels = Infinity) {
  const h = pngInfo(b);
  const { width, height, depth, colorType, interlace } = h;
  if (!(colorType in CHANNELS) || ![1, 2, 4, 8, 16].includes(depth)) throw new PngError(`unsupported PNG (colour type ${colorType}, depth ${depth})`);
  if (!width || !height) throw new PngError("corrupt PNG (zero size)");
  if (width * height > maxPixels) throw new PngError(`image claims ${width}x${height} pixels, above the ${maxPixels.toLocaleString("en")} limit`);
  const idat = [];
  let palette = null, trns = null, orientation = 1, pos = 8;
  while (pos + 8 <= b.length) {
    const len = u32(b, pos), type = String.fromCharCode(b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]);
    const data = b.subarray(pos + 8, pos + 8 + len);
    if (pos + 12 + len > b.length) throw new PngError("corrupt or truncated PNG (a chunk runs past the end)");
    if (type === "IDAT") idat.push(data);
    else if (type === "PLTE") palette = data;
    else if (type === "tRNS") trns = data;
    else if (type === "eXIf") orientation = exifOrientation(data);
    else if (type === "IEND") break;
    pos += 12 + len;
  }
  if (!idat.length) throw new PngError("corrupt PNG (no image data)");
  const raw = await inflate(new Blob(idat));
  const ch = CHANNELS[colorType];
  const bitsPerPixel = ch * depth, bpp = Math.max(1, bitsPerPixel >> 3);
  // unfiltered samples of the full image, one value per sample (index or level)
  const samples = depth === 16 ? new Uint16Array(width * height * ch) : new Uint8Array(width * height * ch);
  let offset = 0;
  const passes = interlace ? [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]]
                           : [[0, 0, 1, 1]];
  for (const [x0, y0, dx, dy] of passes) {
    const pw = Math.ceil((width - x0) / dx), ph = Math.ceil((height - y0) / dy);
    if (pw <= 0 || ph <= 0) continue;
    const stride = Math.ceil((pw * bitsPerPixel) / 8);
    let prev = new Uint8Array(stride);
    for (let y = 0; y < ph; y++) {
      if (offset + 1 + stride > raw.length) throw new PngError("corrupt or truncated PNG (image data too short)");
      const filter = raw[offset];
      const line = raw.slice(offset + 1, offset + 1 + stride);
      offset += 1 + stride;
      unfilter(filter, line, prev, bpp);
      prev = line;
      const row = y0 + y * dy;
      for (let i = 0; i < pw; i++) {
        const col = x0 + i * dx, o = (row * width + col) * ch;
        for (let c = 0; c < ch; c++) samples[o + c] = sample(line, i * ch + c, depth);
      }
    }
  }
  return toPillowMode(samples, width, height, depth, colorType, palette, trns, orientation);
}

function unfilter(f, line, prev, bpp) {
  const n = line.length;
  if (f === 0) return;
  for (let i = 0; i < n; i++) {
    const a = i >= bpp ? line[i - bpp] : 0, up = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
    let p;
    if (f === 1) p = a;
    else if (f === 2) p = up;
    else if (f === 3) p = (a + up) >> 1;
    else if (f === 4) {
      const pa = Math.abs(up - c), pb = Math.abs(a - c), pc = Math.abs(a + up - 2 * c);
      p = pa <= pb && pa <= pc ? a : pb <= pc ? up : c;
    } else throw new PngError(`corrupt PNG (filter type ${f})`);
    line[i] = (line[i] + p) & 255;
  }
}

function sample(line, k, depth) {
  if (depth === 8) return line[k];
  if (depth === 16) return (line[2 * k] << 8) | line[2 * k + 1];
  const perByte = 8 / depth, byte = line[Math.floor(k / perByte)], shift = 8 - depth * (k % perByte + 1);
  return (byte >> shift) & ((1 << depth) - 1);
}

function toPillowMode(s, width, height, depth, colorType, palette, trns, orientation) {
  const n = width * height, base = { width, height, orientation };
  if (colorType === 0) {
    if (depth === 16) return { ...base, mode: "I;16", channels: 1, data: s };
    const scale = { 1: 255, 2: 85, 4: 17, 8: 1 }[depth]; // Pillow's "1" (then RGB) and L;2 / L;4 unpackers
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = s[i] * scale;
    return { ...base, mode: "L", channels: 1, data: out };
  }
  if (colorType === 3) {
    if (!palette) throw new PngError("corrupt PNG (palette image without PLTE)");
    const alpha = trns !== null;
    const ch = alpha ? 4 : 3, out = new Uint8Array(n * ch);
    for (let i = 0; i < n; i++) {
      const k = s[i];
      for (let c = 0; c < 3; c++) out[i * ch + c] = 3 * k + c < palette.length ? palette[3 * k + c] : 0;
      if (alpha) out[i * ch + 3] = k < trns.length ? trns[k] : 255;
    }
    return { ...base, mode: alpha ? "RGBA" : "RGB", channels: ch, data: out };
  }
  const ch = { 2: 3, 4: 2, 6: 4 }[colorType];
  const out = new Uint8Array(n * ch);
  for (let i = 0; i < n * ch; i++) out[i] = depth === 16 ? s[i] >> 8 : s[i]; // 16-bit colour: the high byte
  return { ...base, mode: { 2: "RGB", 4: "LA", 6: "RGBA" }[colorType], channels: ch, data: out };
}
