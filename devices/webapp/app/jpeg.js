// A JPEG decoder for the input contract: baseline and progressive Huffman JPEG, 8-bit, 1 or 3 components,
// giving what libjpeg(-turbo) gives with its defaults (accurate integer IDCT "islow", fancy upsampling) at
// 1/1, 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCTs, its per-component IDCT scaling and its upsamplers).
// The browser's own decoder cannot decode at a reduced scale, so the page decodes JPEGs here.
// Not supported (decodeJpeg throws JpegUnsupported): arithmetic coding, lossless, hierarchical, 12-bit,
// 2 or 4 components (CMYK / YCCK).

export class JpegUnsupported extends Error {}
export class JpegError extends Error {}

// zigzag position -> natural (row-major) index; 16 extra entries of 63 catch a corrupt run past the end
const NATURAL = Int32Array.from([
  0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7,
  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39,
  46, 53, 60, 61, 54, 47, 55, 62, 63, ...Array(16).fill(63)]);

// -- markers -------------------------------------------------------------------------------------------
function u16(b, i) { return (b[i] << 8) | b[i + 1]; }

/** Width, height, components, EXIF orientation, colour transform: the header only. */
export function jpegInfo(bytes) {
  return parse(bytes, false);
}

function exifOrientation(b, start, end) {
  // APP1 payload "Exif\0\0" + TIFF: byte order, IFD0 offset, entries of 12 bytes; tag 0x0112 (SHORT)
  const t = start + 6;
  if (end - t < 8) return 1;
  const le = b[t] === 0x49 && b[t + 1] === 0x49;
  if (!le && !(b[t] === 0x4d && b[t + 1] === 0x4d)) return 1;
  const r16 = (i) => (le ? b[i] | (b[i + 1] << 8) : (b[i] << 8) | b[i + 1]);
  const r32 = (i) => (le ? (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16)) + b[i + 3] * 2 ** 24
                         : ((b[i] * 2 ** 24) + ((b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3])));
  const ifd = t + r32(t + 4);
  if (ifd + 2 > end) return 1;
  const n = r16(ifd);
  for (let k = 0; k < n; k++) {
    const e = ifd + 2 + 12 * k;
    if (e + 12 > end) break;
    if (r16(e) === 0x0112) return r16(e + 8);
  }
  return 1;
}

function parse(bytes, decode, scale = 1) {
  const b = bytes;
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) throw new JpegError("not a JPEG file (no SOI marker)");
  const info = { width: 0, height: 0, components: [], progressive: false, orientation: 1, adobe: null,
                 jfif: false, precision: 8 };
  const qt = [];
  const dc = [], ac = [];
  let restart = 0, frame = null, pos = 2, exifSeen = false;
  const eobrun = { n: 0 };
  while (pos < b.length) {
    if (b[pos] !== 0xff) { pos++; continue; } // garbage between markers: libjpeg skips it (with a warning)
    while (b[pos] === 0xff) pos++;
    const m = b[pos++];
    if (m === 0xd8 || (m >= 0xd0 && m <= 0xd7) || m === 0x01) continue;
    if (m === 0xd9) break; // EOI
    if (pos + 2 > b.length) break;
    const len = u16(b, pos), start = pos + 2, end = pos + len;
    if (len < 2 || end > b.length) throw new JpegError("corrupt or truncated JPEG (a marker segment runs past the end)");
    if (m === 0xe0 && len >= 7 && String.fromCharCode(...b.subarray(start, start + 5)) === "JFIF\0") info.jfif = true;
    else if (m === 0xe1 && !exifSeen && len >= 8 && String.fromCharCode(...b.subarray(start, start + 6)) === "Exif\0\0") {
      exifSeen = true;
      info.orientation = exifOrientation(b, start, end);
    } else if (m === 0xee && len >= 14 && String.fromCharCode(...b.subarray(start, start + 5)) === "Adobe") info.adobe = b[start + 11];
    else if (m === 0xdb) { // DQT
      for (let i = start; i < end;) {
        const pq = b[i] >> 4, tq = b[i] & 15; i++;
        const table = new Int32Array(64);
        for (let k = 0; k < 64; k++) { table[NATURAL[k]] = pq ? u16(b, i + 2 * k) : b[i + k]; }
        i += pq ? 128 : 64;
        qt[tq] = table;
      }
    } else if (m === 0xc4) { // DHT
      for (let i = start; i < end;) {
        const tc = b[i] >> 4, th = b[i] & 15;
        const counts = b.subarray(i + 1, i + 17);
        let total = 0;
        for (let k = 0; k < 16; k++) total += counts[k];
        const symbols = b.subarray(i + 17, i + 17 + total);
        (tc === 0 ? dc : ac)[th] = huffTable(counts, symbols);
        i += 17 + total;
      }
    } else if (m === 0xdd) restart = u16(b, start);
    else if (m === 0xc0 || m === 0xc1 || m === 0xc2) {
      info.precision = b[start];
      info.height = u16(b, start + 1);
      info.width = u16(b, start + 3);
      info.progressive = m === 0xc2;
      const nf = b[start + 5];
      for (let k = 0; k < nf; k++) {
        const o = start + 6 + 3 * k;
        info.components.push({ id: b[o], h: b[o + 1] >> 4, v: b[o + 1] & 15, tq: b[o + 2] });
      }
      if (!decode) return info;
      frame = setupFrame(info, scale);
    } else if ((m >= 0xc3 && m <= 0xcf) && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      const kind = m >= 0xc9 ? "arithmetic-coded" : (m === 0xc3 || m === 0xc7 || m === 0xcb || m === 0xcf) ? "lossless" : "hierarchical";
      if (!decode) { info.unsupported = kind; return info; }
      throw new JpegUnsupported(`${kind} JPEG is not supported by the page's decoder`);
    } else if (m === 0xda) { // SOS
      if (!frame) throw new JpegError("corrupt JPEG (scan before the frame header)");
      const ns = b[start];
      const comps = [];
      for (let k = 0; k < ns; k++) {
        const id = b[start + 1 + 2 * k], t = b[start + 2 + 2 * k];
        const c = frame.components.find((x) => x.id === id);
        if (!c) throw new JpegError("corrupt JPEG (a scan names an unknown component)");
        c.dcTable = dc[t >> 4]; c.acTable = ac[t & 15];
        if (!c.quant) {
          if (!qt[c.tq]) throw new JpegError("corrupt JPEG (a component's quantization table is missing)");
          c.quant = qt[c.tq]; // latched at the first scan of the component, as libjpeg does
        }
        comps.push(c);
      }
      const o = start + 1 + 2 * ns;
      const ss = b[o], se = b[o + 1], ah = b[o + 2] >> 4, al = b[o + 2] & 15;
      pos = decodeScan(b, end, frame, comps, restart, ss, se, ah, al, eobrun);
      continue;
    } else if (m === 0xdc) throw new JpegUnsupported("JPEG with a DNL marker is not supported by the page's decoder");
    pos = end;
  }
  if (!frame) throw new JpegError("corrupt JPEG (no frame header)");
  if (!frame.scans) throw new JpegError("corrupt or truncated JPEG (no image data)");
  return { info, frame };
}

function huffTable(counts, symbols) {
  // canonical Huffman: per code length the largest code and the index of its first symbol
  const maxcode = new Int32Array(18).fill(-1), valptr = new Int32Array(17), mincode = new Int32Array(17);
  let code = 0, k = 0;
  for (let l = 1; l <= 16; l++) {
    valptr[l] = k; mincode[l] = code;
    code += counts[l - 1]; k += counts[l - 1];
    maxcode[l] = counts[l - 1] ? code - 1 : -1;
    code <<= 1;
  }
  maxcode[17] = 0x7fffffff;
  // 8-bit lookahead: (length << 8) | symbol for codes up to 8 bits
  const look = new Int32Array(256).fill(0);
  code = 0; k = 0;
  for (let l = 1; l <= 8; l++) {
    for (let i = 0; i < counts[l - 1]; i++, k++) {
      const shift = 8 - l;
      for (let x = 0; x < (1 << shift); x++) look[(code << shift) | x] = (l << 8) | symbols[k];
      code++;
    }
    code <<= 1;
  }
  return { maxcode, valptr, mincode, symbols: Uint8Array.from(symbols), look };
}

function setupFrame(info, scale) {
  if (info.precision !== 8) throw new JpegUnsupported(`${info.precision}-bit JPEG is not supported by the page's decoder`);
  if (info.components.length !== 1 && info.components.length !== 3) {
    throw new JpegUnsupported(`JPEG with ${info.components.length} components (CMYK?) is not supported by the page's decoder`);
  }
  if (!info.width || !info.height) throw new JpegUnsupported("JPEG without its height in the frame header (DNL) is not supported");
  const comps = info.components;
  const maxh = Math.max(...comps.map((c) => c.h)), maxv = Math.max(...comps.map((c) => c.v));
  if (comps.some((c) => !c.h || !c.v || c.h > 4 || c.v > 4)) throw new JpegError("corrupt JPEG (bad sampling factors)");
  const mcusPerLine = Math.ceil(info.width / (8 * maxh)), mcusPerColumn = Math.ceil(info.height / (8 * maxv));
  const frame = { width: info.width, height: info.height, maxh, maxv, mcusPerLine, mcusPerColumn, scans: 0,
                  progressive: info.progressive, scale, components: [] };
  for (const c of comps) {
    const blocksPerLine = Math.ceil(Math.ceil(info.width * c.h / maxh) / 8);
    const blocksPerColumn = Math.ceil(Math.ceil(info.height * c.v / maxv) / 8);
    const bpl = mcusPerLine * c.h, bpc = mcusPerColumn * c.v; // MCU-padded
    if (bpl * bpc * 64 > 2 ** 28) throw new JpegError("JPEG too large for the page's decoder");
    frame.components.push({ ...c, blocksPerLine, blocksPerColumn, bpl, bpc, coefs: new Int16Array(bpl * bpc * 64),
                            pred: 0, quant: null });
  }
  return frame;
}

// -- entropy decoding ------------------------------------------------------------------------------------
class Bits {
  constructor(b, pos) { this.b = b; this.pos = pos; this.acc = 0; this.n = 0; this.marker = false; this.pastEnd = 0; }
  fill() { // one more byte into the accumulator; past a marker libjpeg supplies zeros
    let byte = 0;
    if (this.pos >= this.b.length && ++this.pastEnd > 1) { // one byte of look-ahead is allowed, more is data missing
      throw new JpegError("corrupt or truncated JPEG (the image data ends early)");
    }
    if (!this.marker && this.pos < this.b.length) {
      byte = this.b[this.pos];
      if (byte === 0xff) {
        let next = this.b[this.pos + 1];
        if (next === 0x00) this.pos += 2;
        else { this.marker = true; byte = 0; }
      } else this.pos++;
    }
    this.acc = ((this.acc << 8) | byte) >>> 0;
    this.n += 8;
  }
  bit() {
    if (this.n === 0) this.fill();
    this.n--;
    return (this.acc >>> this.n) & 1;
  }
  bits(k) {
    let v = 0;
    while (k > 0) {
      if (this.n === 0) this.fill();
      const take = Math.min(k, this.n);
      this.n -= take; k -= take;
      v = (v << take) | ((this.acc >>> this.n) & ((1 << take) - 1));
    }
    return v;
  }
  decode(t) {
    if (this.n < 8) { this.fill(); }
    if (this.n >= 8) {
      const e = t.look[(this.acc >>> (this.n - 8)) & 255];
      if (e) { this.n -= e >> 8; return e & 255; }
    }
    let code = 0, l = 0;
    do { code = (code << 1) | this.bit(); l++; } while (l <= 16 && code > t.maxcode[l]);
    if (l > 16) return 0; // corrupt data: libjpeg warns and takes 0
    return t.symbols[t.valptr[l] + code - t.mincode[l]];
  }
  reset() { this.n = 0; this.acc = 0; }
}

function extend(v, s) { return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v; }

function decodeScan(b, segEnd, frame, comps, restart, ss, se, ah, al, eobrun) {
  const bits = new Bits(b, segEnd);
  frame.scans++;
  const progressive = frame.progressive;
  let decodeBlock;
  if (!progressive) decodeBlock = baseline;
  else if (ss === 0) decodeBlock = ah === 0 ? dcFirst : dcRefine;
  else decodeBlock = ah === 0 ? acFirst : acRefine;
  if (progressive && ss !== 0 && comps.length !== 1) throw new JpegError("corrupt JPEG (an interleaved AC scan)");

  function baseline(c, off) {
    const z = c.coefs;
    let s = bits.decode(c.dcTable);
    const diff = s ? extend(bits.bits(s), s) : 0;
    c.pred += diff;
    z[off] = c.pred;
    for (let k = 1; k < 64; k++) {
      const rs = bits.decode(c.acTable);
      const r = rs >> 4; s = rs & 15;
      if (s) { k += r; z[off + NATURAL[k]] = extend(bits.bits(s), s); }
      else { if (r !== 15) break; k += 15; }
    }
  }
  function dcFirst(c, off) {
    const s = bits.decode(c.dcTable);
    const diff = s ? extend(bits.bits(s), s) : 0;
    c.pred += diff;
    c.coefs[off] = c.pred * (1 << al);
  }
  function dcRefine(c, off) {
    if (bits.bit()) c.coefs[off] |= 1 << al;
  }
  function acFirst(c, off) {
    if (eobrun.n > 0) { eobrun.n--; return; }
    const z = c.coefs;
    for (let k = ss; k <= se; k++) {
      const rs = bits.decode(c.acTable);
      const r = rs >> 4, s = rs & 15;
      if (s) { k += r; z[off + NATURAL[k]] = extend(bits.bits(s), s) * (1 << al); }
      else if (r === 15) k += 15;
      else { eobrun.n = 1 << r; if (r) eobrun.n += bits.bits(r); eobrun.n--; break; }
    }
  }
  function acRefine(c, off) {
    const z = c.coefs, p1 = 1 << al, m1 = -1 << al;
    let k = ss;
    const refine = (i) => {
      if (bits.bit() && (z[i] & p1) === 0) z[i] += z[i] >= 0 ? p1 : m1;
    };
    if (eobrun.n === 0) {
      for (; k <= se; k++) {
        const rs = bits.decode(c.acTable);
        let r = rs >> 4, s = rs & 15;
        if (s) s = bits.bit() ? p1 : m1;
        else if (r !== 15) { eobrun.n = 1 << r; if (r) eobrun.n += bits.bits(r); break; }
        do {
          const i = off + NATURAL[k];
          if (z[i] !== 0) refine(i);
          else if (--r < 0) break;
          k++;
        } while (k <= se);
        if (s) z[off + NATURAL[k]] = s;
      }
    }
    if (eobrun.n > 0) {
      for (; k <= se; k++) { const i = off + NATURAL[k]; if (z[i] !== 0) refine(i); }
      eobrun.n--;
    }
  }

  const single = comps.length === 1;
  const total = single ? comps[0].blocksPerLine * comps[0].blocksPerColumn : frame.mcusPerLine * frame.mcusPerColumn;
  const interval = restart || total;
  let done = 0;
  eobrun.n = 0;
  for (const c of comps) c.pred = 0;
  while (done < total) {
    const stop = Math.min(done + interval, total);
    for (; done < stop; done++) {
      if (single) {
        const c = comps[0];
        const row = Math.floor(done / c.blocksPerLine), col = done % c.blocksPerLine;
        decodeBlock(c, (row * c.bpl + col) * 64);
      } else {
        const mr = Math.floor(done / frame.mcusPerLine), mc = done % frame.mcusPerLine;
        for (const c of comps) {
          for (let y = 0; y < c.v; y++) {
            for (let x = 0; x < c.h; x++) decodeBlock(c, ((mr * c.v + y) * c.bpl + mc * c.h + x) * 64);
          }
        }
      }
    }
    if (done < total) { // restart: drop the buffered bits, skip the RSTn marker, reset the predictors
      bits.reset();
      let p = bits.pos;
      while (p + 1 < b.length && !(b[p] === 0xff && b[p + 1] !== 0 && b[p + 1] !== 0xff)) p++;
      if (p + 1 < b.length && b[p + 1] >= 0xd0 && b[p + 1] <= 0xd7) p += 2;
      bits.pos = p; bits.marker = false;
      for (const c of comps) c.pred = 0;
      eobrun.n = 0;
    }
  }
  // the next marker after the entropy-coded data
  let p = bits.pos;
  while (p + 1 < b.length && !(b[p] === 0xff && b[p + 1] !== 0 && !(b[p + 1] >= 0xd0 && b[p + 1] <= 0xd7) && b[p + 1] !== 0xff)) p++;
  return p;
}

// -- inverse DCTs (libjpeg's jidctint.c islow and jidctred.c 4x4, 2x2, 1x1; CONST_BITS 13, PASS1_BITS 2) --
const F = { c0_298631336: 2446, c0_390180644: 3196, c0_541196100: 4433, c0_765366865: 6270, c0_899976223: 7373,
            c1_175875602: 9633, c1_501321110: 12299, c1_847759065: 15137, c1_961570560: 16069, c2_053119869: 16819,
            c2_562915447: 20995, c3_072711026: 25172, c0_211164243: 1730, c0_509795579: 4176, c0_601344887: 4926,
            c0_720959822: 5906, c0_850430095: 6967, c1_061594337: 8697, c1_272758580: 10426, c1_451774981: 11893,
            c2_172734803: 17799, c3_624509785: 29692 };
// DESCALE(x, n) = (x + 2^(n-1)) >> n, arithmetic; in float64 (exact below 2^53, as libjpeg's 64-bit JLONG)
const descale = (x, n) => Math.floor((x + 2 ** (n - 1)) / 2 ** n);
// libjpeg's post-IDCT range limit: index x & 1023 -> clamp(x + 128) for -128..383, wrapping beyond
const LIMIT = (() => {
  const t = new Uint8Array(1024);
  for (let x = 0; x < 1024; x++) {
    if (x < 128) t[x] = x + 128;
    else if (x < 512) t[x] = 255;
    else if (x < 896) t[x] = 0;
    else t[x] = x - 896;
  }
  return t;
})();
const lim = (x) => LIMIT[x & 1023];

function idctIslow(z, off, q, out, stride, o) {
  const ws = new Float64Array(64);
  for (let c = 0; c < 8; c++) {
    const i = off + c;
    if (!z[i + 8] && !z[i + 16] && !z[i + 24] && !z[i + 32] && !z[i + 40] && !z[i + 48] && !z[i + 56]) {
      const dcval = z[i] * q[c] * 4;
      for (let r = 0; r < 8; r++) ws[r * 8 + c] = dcval;
      continue;
    }
    let z2 = z[i + 16] * q[c + 16], z3 = z[i + 48] * q[c + 48];
    let z1 = (z2 + z3) * F.c0_541196100;
    let tmp2 = z1 + z3 * -F.c1_847759065, tmp3 = z1 + z2 * F.c0_765366865;
    z2 = z[i] * q[c]; z3 = z[i + 32] * q[c + 32];
    let tmp0 = (z2 + z3) * 8192, tmp1 = (z2 - z3) * 8192;
    const tmp10 = tmp0 + tmp3, tmp13 = tmp0 - tmp3, tmp11 = tmp1 + tmp2, tmp12 = tmp1 - tmp2;
    tmp0 = z[i + 56] * q[c + 56]; tmp1 = z[i + 40] * q[c + 40]; tmp2 = z[i + 24] * q[c + 24]; tmp3 = z[i + 8] * q[c + 8];
    z1 = tmp0 + tmp3; z2 = tmp1 + tmp2; z3 = tmp0 + tmp2; let z4 = tmp1 + tmp3;
    const z5 = (z3 + z4) * F.c1_175875602;
    tmp0 *= F.c0_298631336; tmp1 *= F.c2_053119869; tmp2 *= F.c3_072711026; tmp3 *= F.c1_501321110;
    z1 *= -F.c0_899976223; z2 *= -F.c2_562915447; z3 *= -F.c1_961570560; z4 *= -F.c0_390180644;
    z3 += z5; z4 += z5;
    tmp0 += z1 + z3; tmp1 += z2 + z4; tmp2 += z2 + z3; tmp3 += z1 + z4;
    ws[c] = descale(tmp10 + tmp3, 11); ws[56 + c] = descale(tmp10 - tmp3, 11);
    ws[8 + c] = descale(tmp11 + tmp2, 11); ws[48 + c] = descale(tmp11 - tmp2, 11);
    ws[16 + c] = descale(tmp12 + tmp1, 11); ws[40 + c] = descale(tmp12 - tmp1, 11);
    ws[24 + c] = descale(tmp13 + tmp0, 11); ws[32 + c] = descale(tmp13 - tmp0, 11);
  }
  for (let r = 0; r < 8; r++) {
    const w = r * 8, p = o + r * stride;
    if (!ws[w + 1] && !ws[w + 2] && !ws[w + 3] && !ws[w + 4] && !ws[w + 5] && !ws[w + 6] && !ws[w + 7]) {
      const v = lim(descale(ws[w], 5));
      for (let c = 0; c < 8; c++) out[p + c] = v;
      continue;
    }
    let z2 = ws[w + 2], z3 = ws[w + 6];
    let z1 = (z2 + z3) * F.c0_541196100;
    let tmp2 = z1 + z3 * -F.c1_847759065, tmp3 = z1 + z2 * F.c0_765366865;
    let tmp0 = (ws[w] + ws[w + 4]) * 8192, tmp1 = (ws[w] - ws[w + 4]) * 8192;
    const tmp10 = tmp0 + tmp3, tmp13 = tmp0 - tmp3, tmp11 = tmp1 + tmp2, tmp12 = tmp1 - tmp2;
    tmp0 = ws[w + 7]; tmp1 = ws[w + 5]; tmp2 = ws[w + 3]; tmp3 = ws[w + 1];
    z1 = tmp0 + tmp3; z2 = tmp1 + tmp2; z3 = tmp0 + tmp2; let z4 = tmp1 + tmp3;
    const z5 = (z3 + z4) * F.c1_175875602;
    tmp0 *= F.c0_298631336; tmp1 *= F.c2_053119869; tmp2 *= F.c3_072711026; tmp3 *= F.c1_501321110;
    z1 *= -F.c0_899976223; z2 *= -F.c2_562915447; z3 *= -F.c1_961570560; z4 *= -F.c0_390180644;
    z3 += z5; z4 += z5;
    tmp0 += z1 + z3; tmp1 += z2 + z4; tmp2 += z2 + z3; tmp3 += z1 + z4;
    out[p] = lim(descale(tmp10 + tmp3, 18)); out[p + 7] = lim(descale(tmp10 - tmp3, 18));
    out[p + 1] = lim(descale(tmp11 + tmp2, 18)); out[p + 6] = lim(descale(tmp11 - tmp2, 18));
    out[p + 2] = lim(descale(tmp12 + tmp1, 18)); out[p + 5] = lim(descale(tmp12 - tmp1, 18));
    out[p + 3] = lim(descale(tmp13 + tmp0, 18)); out[p + 4] = lim(descale(tmp13 - tmp0, 18));
  }
}

function idct4x4(z, off, q, out, stride, o) {
  const ws = new Float64Array(32);
  for (let c = 0; c < 8; c++) {
    if (c === 4) continue;
    const i = off + c;
    if (!z[i + 8] && !z[i + 16] && !z[i + 24] && !z[i + 40] && !z[i + 48] && !z[i + 56]) {
      const dcval = z[i] * q[c] * 4;
      for (let r = 0; r < 4; r++) ws[r * 8 + c] = dcval;
      continue;
    }
    const tmp0 = z[i] * q[c] * 16384;
    const tmp2 = z[i + 16] * q[c + 16] * F.c1_847759065 + z[i + 48] * q[c + 48] * -F.c0_765366865;
    const tmp10 = tmp0 + tmp2, tmp12 = tmp0 - tmp2;
    const z1 = z[i + 56] * q[c + 56], z2 = z[i + 40] * q[c + 40], z3 = z[i + 24] * q[c + 24], z4 = z[i + 8] * q[c + 8];
    const t0 = z1 * -F.c0_211164243 + z2 * F.c1_451774981 + z3 * -F.c2_172734803 + z4 * F.c1_061594337;
    const t2 = z1 * -F.c0_509795579 + z2 * -F.c0_601344887 + z3 * F.c0_899976223 + z4 * F.c2_562915447;
    ws[c] = descale(tmp10 + t2, 12); ws[24 + c] = descale(tmp10 - t2, 12);
    ws[8 + c] = descale(tmp12 + t0, 12); ws[16 + c] = descale(tmp12 - t0, 12);
  }
  for (let r = 0; r < 4; r++) {
    const w = r * 8, p = o + r * stride;
    if (!ws[w + 1] && !ws[w + 2] && !ws[w + 3] && !ws[w + 5] && !ws[w + 6] && !ws[w + 7]) {
      const v = lim(descale(ws[w], 5));
      out[p] = out[p + 1] = out[p + 2] = out[p + 3] = v;
      continue;
    }
    const tmp0 = ws[w] * 16384;
    const tmp2 = ws[w + 2] * F.c1_847759065 + ws[w + 6] * -F.c0_765366865;
    const tmp10 = tmp0 + tmp2, tmp12 = tmp0 - tmp2;
    const z1 = ws[w + 7], z2 = ws[w + 5], z3 = ws[w + 3], z4 = ws[w + 1];
    const t0 = z1 * -F.c0_211164243 + z2 * F.c1_451774981 + z3 * -F.c2_172734803 + z4 * F.c1_061594337;
    const t2 = z1 * -F.c0_509795579 + z2 * -F.c0_601344887 + z3 * F.c0_899976223 + z4 * F.c2_562915447;
    out[p] = lim(descale(tmp10 + t2, 19)); out[p + 3] = lim(descale(tmp10 - t2, 19));
    out[p + 1] = lim(descale(tmp12 + t0, 19)); out[p + 2] = lim(descale(tmp12 - t0, 19));
  }
}

function idct2x2(z, off, q, out, stride, o) {
  const ws = new Float64Array(16);
  for (let c = 0; c < 8; c++) {
    if (c === 2 || c === 4 || c === 6) continue;
    const i = off + c;
    if (!z[i + 8] && !z[i + 24] && !z[i + 40] && !z[i + 56]) {
      const dcval = z[i] * q[c] * 4;
      ws[c] = ws[8 + c] = dcval;
      continue;
    }
    const tmp10 = z[i] * q[c] * 32768;
    const tmp0 = z[i + 56] * q[c + 56] * -F.c0_720959822 + z[i + 40] * q[c + 40] * F.c0_850430095 +
                 z[i + 24] * q[c + 24] * -F.c1_272758580 + z[i + 8] * q[c + 8] * F.c3_624509785;
    ws[c] = descale(tmp10 + tmp0, 13); ws[8 + c] = descale(tmp10 - tmp0, 13);
  }
  for (let r = 0; r < 2; r++) {
    const w = r * 8, p = o + r * stride;
    if (!ws[w + 1] && !ws[w + 3] && !ws[w + 5] && !ws[w + 7]) {
      out[p] = out[p + 1] = lim(descale(ws[w], 5));
      continue;
    }
    const tmp10 = ws[w] * 32768;
    const tmp0 = ws[w + 7] * -F.c0_720959822 + ws[w + 5] * F.c0_850430095 + ws[w + 3] * -F.c1_272758580 +
                 ws[w + 1] * F.c3_624509785;
    out[p] = lim(descale(tmp10 + tmp0, 20)); out[p + 1] = lim(descale(tmp10 - tmp0, 20));
  }
}

function idct1x1(z, off, q, out, stride, o) {
  out[o] = lim(descale(z[off] * q[0], 3));
}

const IDCT = { 8: idctIslow, 4: idct4x4, 2: idct2x2, 1: idct1x1 };

// -- output: IDCT scaling per component, upsampling, colour conversion -----------------------------------
function plane(c, ssize) {
  const w = c.bpl * ssize, h = c.bpc * ssize;
  const out = new Uint8Array(w * h);
  const idct = IDCT[ssize];
  for (let by = 0; by < c.bpc; by++) {
    for (let bx = 0; bx < c.bpl; bx++) {
      idct(c.coefs, (by * c.bpl + bx) * 64, c.quant, out, w, by * ssize * w + bx * ssize);
    }
  }
  return { data: out, stride: w };
}

function upsample(p, c, frame, minS, ssize, outW, outH, fancy) {
  const hIn = (c.h * ssize) / minS, vIn = (c.v * ssize) / minS, hOut = frame.maxh, vOut = frame.maxv;
  const dw = Math.ceil((frame.width * c.h * ssize) / (frame.maxh * 8));
  const dh = Math.ceil((frame.height * c.v * ssize) / (frame.maxv * 8));
  const src = p.data, s = p.stride;
  const row = (r) => Math.min(r, dh - 1) * s; // rows past the component's last are its last (jdmainct.c)
  const out = new Uint8Array(outW * outH);
  if (hIn === hOut && vIn === vOut) {
    for (let y = 0; y < outH; y++) out.set(src.subarray(y * s, y * s + outW), y * outW);
    return out;
  }
  const rowOut = new Uint8Array(2 * dw + 2);
  if (hIn * 2 === hOut && vIn === vOut && fancy && dw > 2) { // h2v1 fancy
    for (let y = 0; y < outH; y++) {
      h2v1(src, row(y), dw, rowOut);
      out.set(rowOut.subarray(0, outW), y * outW);
    }
    return out;
  }
  if (hIn === hOut && vIn * 2 === vOut && fancy) { // h1v2 fancy
    for (let y = 0; y < outH; y++) {
      const r = y >> 1, near = row(r), far = (y & 1) ? row(r + 1) : row(Math.max(r - 1, 0)), bias = (y & 1) ? 2 : 1;
      for (let x = 0; x < outW; x++) out[y * outW + x] = (src[near + x] * 3 + src[far + x] + bias) >> 2;
    }
    return out;
  }
  if (hIn * 2 === hOut && vIn * 2 === vOut && fancy && dw > 2) { // h2v2 fancy
    for (let y = 0; y < outH; y++) {
      const r = y >> 1, near = row(r), far = (y & 1) ? row(r + 1) : row(Math.max(r - 1, 0));
      h2v2(src, near, far, dw, rowOut);
      out.set(rowOut.subarray(0, outW), y * outW);
    }
    return out;
  }
  if (hOut % hIn || vOut % vIn) throw new JpegUnsupported("JPEG with fractional sampling ratios is not supported");
  const he = hOut / hIn, ve = vOut / vIn; // box (replication) upsampling
  for (let y = 0; y < outH; y++) {
    const r = row(Math.floor(y / ve));
    for (let x = 0; x < outW; x++) out[y * outW + x] = src[r + Math.floor(x / he)];
  }
  return out;
}

function h2v1(src, r, dw, out) {
  let v = src[r];
  out[0] = v; out[1] = (v * 3 + src[r + 1] + 2) >> 2;
  let o = 2;
  for (let i = 1; i < dw - 1; i++) {
    v = src[r + i] * 3;
    out[o++] = (v + src[r + i - 1] + 1) >> 2;
    out[o++] = (v + src[r + i + 1] + 2) >> 2;
  }
  v = src[r + dw - 1];
  out[o++] = (v * 3 + src[r + dw - 2] + 1) >> 2;
  out[o] = v;
}

function h2v2(src, n, f, dw, out) {
  let thiscol = src[n] * 3 + src[f], next = src[n + 1] * 3 + src[f + 1];
  out[0] = (thiscol * 4 + 8) >> 4;
  out[1] = (thiscol * 3 + next + 7) >> 4;
  let last = thiscol; thiscol = next;
  let o = 2;
  for (let i = 2; i < dw; i++) {
    next = src[n + i] * 3 + src[f + i];
    out[o++] = (thiscol * 3 + last + 8) >> 4;
    out[o++] = (thiscol * 3 + next + 7) >> 4;
    last = thiscol; thiscol = next;
  }
  out[o++] = (thiscol * 3 + last + 8) >> 4;
  out[o] = (thiscol * 4 + 7) >> 4;
}

// YCbCr -> RGB tables of jdcolor.c (SCALEBITS 16)
const YCC = (() => {
  const crR = new Int32Array(256), cbB = new Int32Array(256), crG = new Float64Array(256), cbG = new Float64Array(256);
  for (let i = 0; i < 256; i++) {
    const x = i - 128;
    crR[i] = Math.floor((91881 * x + 32768) / 65536);
    cbB[i] = Math.floor((116130 * x + 32768) / 65536);
    crG[i] = -46802 * x;
    cbG[i] = -22554 * x + 32768;
  }
  return { crR, cbB, crG, cbG };
})();
const clamp255 = (v) => (v < 0 ? 0 : v > 255 ? 255 : v);

/**
 * Decode at 1/scale (scale 1, 2, 4 or 8) -> {width, height, channels: 1 | 3, data: Uint8Array (RGB interleaved),
 * orientation (EXIF, not applied), colorTransform}.
 */
export function decodeJpeg(bytes, scale = 1) {
  if (![1, 2, 4, 8].includes(scale)) throw new Error(`scale must be 1, 2, 4 or 8, got ${scale}`);
  const { info, frame } = parse(bytes, true, scale);
  const minS = 8 / scale;
  const outW = Math.ceil((frame.width * minS) / 8), outH = Math.ceil((frame.height * minS) / 8);
  const fancy = minS > 1; // libjpeg: no context rows (so no fancy upsampling) at 1/8
  const planes = frame.components.map((c) => {
    if (!c.quant) throw new JpegError("corrupt JPEG (a component has no scan)");
    let ssize = minS; // scale chroma up in the IDCT rather than upsampling it (jdmaster.c)
    while (ssize < 8 && (frame.maxh * minS) % (c.h * ssize * 2) === 0 && (frame.maxv * minS) % (c.v * ssize * 2) === 0) ssize *= 2;
    return upsample(plane(c, ssize), c, frame, minS, ssize, outW, outH, fancy);
  });
  if (planes.length === 1) return { width: outW, height: outH, channels: 1, data: planes[0], orientation: info.orientation };
  // colour space as libjpeg guesses it: JFIF -> YCbCr; Adobe transform 0 -> RGB; ids 'R','G','B' -> RGB
  const ids = info.components.map((c) => c.id);
  let ycc = true;
  if (!info.jfif && info.adobe !== null) ycc = info.adobe !== 0;
  else if (!info.jfif && ids[0] === 82 && ids[1] === 71 && ids[2] === 66) ycc = false;
  const [p0, p1, p2] = planes, n = outW * outH;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    if (ycc) {
      const y = p0[i], cb = p1[i], cr = p2[i];
      rgb[3 * i] = clamp255(y + YCC.crR[cr]);
      rgb[3 * i + 1] = clamp255(y + Math.floor((YCC.cbG[cb] + YCC.crG[cr]) / 65536));
      rgb[3 * i + 2] = clamp255(y + YCC.cbB[cb]);
    } else { rgb[3 * i] = p0[i]; rgb[3 * i + 1] = p1[i]; rgb[3 * i + 2] = p2[i]; }
  }
  return { width: outW, height: outH, channels: 3, data: rgb, orientation: info.orientation };
}
