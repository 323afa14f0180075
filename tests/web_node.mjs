// Runs the web app's input-contract modules in Node (no browser) for tests/test_web.py.
// stdin: {"app": DIR, "draft": N, "decode": [FILE, ...], "resize": [{"b64", "h", "w", "size", "kernel"}, ...],
//         "equalize": [{"b64"}, ...]}  ->  stdout: {"decode": [...], "resize": [...], "equalize": [...]}
import { readFileSync } from "node:fs";

const req = JSON.parse(readFileSync(0, "utf8"));
const { decode, equalize, resize } = await import(`${req.app}/contract.js`);
const b64 = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("base64");
const bytes = (s) => new Uint8Array(Buffer.from(s, "base64"));
const out = { decode: [], resize: [], equalize: [] };
for (const f of req.decode || []) {
  try {
    const d = await decode(new Uint8Array(readFileSync(f)), f.split("/").pop(), req.draft);
    out.decode.push({ file: f, shape: [d.height, d.width], b64: b64(d.gray), decoder: d.decoder, scale: d.scale });
  } catch (e) {
    out.decode.push({ file: f, error: String(e.message || e) });
  }
}
for (const r of req.resize || []) out.resize.push(b64(resize(bytes(r.b64), r.w, r.h, r.size, r.kernel)));
for (const r of req.equalize || []) out.equalize.push(b64(equalize(bytes(r.b64))));
process.stdout.write(JSON.stringify(out));
