/* edgecxr's input contract re-written in C, as an integrator would: libjpeg(-turbo) decodes JPEG, libpng PNG
 * (when built with it), ONNX Runtime's C API runs the model, every other step is plain C below. No edgecxr code.
 *
 *   recipe BUNDLE --conformance OUT [--threads N]  # OUT/IMAGE/STAGE.npy per image of BUNDLE/conformance/images
 *                                                  # then: edgecxr device conform BUNDLE OUT
 *   recipe BUNDLE [--threads N] [--out DIR] IMAGE...  # image, probability and decision per line (tab-separated);
 *                                                  # --out: DIR/NAME/STAGE.npy per image too
 *
 * Every number comes from BUNDLE/manifest.json (`preprocess`, `input_contract`, `input`, `output`, `threshold`).
 * Scope: ONNX bundles (onnx-fp32, onnx-int8: both take a float32 tensor; NHWC or NCHW), the bilinear resize,
 * JPEG (grayscale or colour; EXIF orientation 1-8, or XMP's where EXIF has none, as edgecxr's runner reads it)
 * and PNG (every colour type and bit depth: 16-bit gray scaled by the contract's rank rule, alpha over black; eXIf or XMP
 * orientation). DICOM is out of scope: such files are refused (skipped with a note in --conformance mode, so
 * `conform` lists them as missing), and so are CMYK JPEGs and bundles with an integer input tensor.
 *
 * Build: examples/c/build.sh (a C compiler, libjpeg's headers, libpng's optional, libonnxruntime.so from the
 * onnxruntime Python wheel).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <jerror.h>

#include "onnxruntime_c_api.h"

static void die(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "recipe: ");
  fprintf(stderr, fmt, a ? a : "", b ? b : "");
  fprintf(stderr, "\n");
  exit(2);
}

static unsigned char *read_all(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) die("%s: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc((size_t)n + 1);
  if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) die("%s: cannot read", path, NULL);
  fclose(f);
  buf[n] = 0;
  *size = (size_t)n;
  return buf;
}

/* -- a minimal JSON reader: enough to look values up in manifest.json ------------------------------------ */
static const char *ws(const char *p) {
  while (*p && isspace((unsigned char)*p)) p++;
  return p;
}

static const char *skip_string(const char *p) { /* p at the opening quote */
  for (p++; *p && *p != '"'; p++)
    if (*p == '\\' && p[1]) p++;
  return *p ? p + 1 : p;
}

static const char *skip_value(const char *p) {
  p = ws(p);
  if (*p == '"') return skip_string(p);
  if (*p == '{' || *p == '[') {
    int depth = 0;
    for (; *p; p++) {
      if (*p == '"') { p = skip_string(p) - 1; continue; }
      if (*p == '{' || *p == '[') depth++;
      if (*p == '}' || *p == ']') { if (--depth == 0) return p + 1; }
    }
    return p;
  }
  while (*p && *p != ',' && *p != '}' && *p != ']') p++; /* number, true, false, null */
  return p;
}

/* The value of `key` in the object starting at `obj`, or NULL. */
static const char *json_get(const char *obj, const char *key) {
  if (!obj) return NULL;
  const char *p = ws(obj);
  if (*p != '{') return NULL;
  p = ws(p + 1);
  size_t n = strlen(key);
  while (*p == '"') {
    const char *k = p + 1, *end = skip_string(p);
    int match = (size_t)(end - 1 - k) == n && strncmp(k, key, n) == 0;
    p = ws(end);
    if (*p != ':') return NULL;
    p = ws(p + 1);
    if (match) return p;
    p = ws(skip_value(p));
    if (*p == ',') p = ws(p + 1);
  }
  return NULL;
}

static const char *json_path(const char *root, const char *a, const char *b, const char *c) {
  const char *v = json_get(root, a);
  if (b) v = json_get(v, b);
  if (c) v = json_get(v, c);
  return v;
}

static int json_null(const char *v) { return !v || strncmp(ws(v), "null", 4) == 0; }

static double json_num(const char *v, const char *what) {
  if (json_null(v)) die("manifest.json: %s is missing", what, NULL);
  char *end;
  double d = strtod(ws(v), &end);
  if (end == ws(v)) die("manifest.json: %s is not a number", what, NULL);
  return d;
}

static void json_str(const char *v, char *out, size_t cap, const char *what) {
  v = ws(v ? v : "");
  if (*v != '"') die("manifest.json: %s is not a string", what, NULL);
  size_t i = 0;
  for (v++; *v && *v != '"' && i + 1 < cap; v++) out[i++] = (*v == '\\' && v[1]) ? *++v : *v;
  out[i] = 0;
}

/* Up to `cap` numbers of a JSON array; returns how many. */
static int json_array(const char *v, double *out, int cap) {
  v = ws(v ? v : "");
  if (*v != '[') return -1;
  int n = 0;
  for (v = ws(v + 1); *v && *v != ']';) {
    char *end;
    double d = strtod(v, &end);
    if (end == v) return -1;
    if (n < cap) out[n] = d;
    n++;
    v = ws(end);
    if (*v == ',') v = ws(v + 1);
  }
  return n;
}

/* -- the bundle's contract ---------------------------------------------------------------------------------- */
typedef struct {
  int size, channels, equalize, draft, nchw, positive_index, crop;
  double crop_box[4]; /* top, bottom, left, right (fractions) */
  float scale, offset, table[256];
  double threshold;
  char kind[32], model[4096];
} Contract;

static void load_contract(const char *bundle, Contract *c) {
  char path[4096], buf[256];
  snprintf(path, sizeof path, "%s/manifest.json", bundle);
  size_t n;
  char *m = (char *)read_all(path, &n);
  const char *pre = json_get(m, "preprocess"), *steps = json_path(m, "input_contract", "steps", NULL);
  if (!pre || !steps) die("%s: no preprocess or input_contract (an edgecxr bundle?)", path, NULL);
  c->size = (int)json_num(json_get(pre, "size"), "preprocess.size");
  c->channels = (int)json_num(json_get(pre, "channels"), "preprocess.channels");
  const char *eq = json_get(pre, "equalize");
  c->equalize = eq && strncmp(eq, "true", 4) == 0;
  c->scale = (float)json_num(json_get(pre, "scale"), "preprocess.scale");
  c->offset = (float)json_num(json_get(pre, "offset"), "preprocess.offset");
  json_str(json_get(pre, "interpolation"), buf, sizeof buf, "preprocess.interpolation");
  if (strcmp(buf, "bilinear") != 0) die("this recipe implements the bilinear resize only, the bundle uses %s", buf, NULL);
  c->crop = !json_null(json_get(pre, "crop"));
  if (c->crop && json_array(json_get(pre, "crop"), c->crop_box, 4) != 4) die("preprocess.crop: 4 numbers expected", NULL, NULL);
  c->draft = (int)json_num(json_path(steps, "decoded", "draft_size", NULL), "input_contract.steps.decoded.draft_size");
  c->threshold = json_num(json_get(m, "threshold"), "threshold");
  json_str(json_get(m, "model_file"), buf, sizeof buf, "model_file");
  snprintf(c->model, sizeof c->model, "%s/%s", bundle, buf);
  json_str(json_path(m, "input", "dtype", NULL), buf, sizeof buf, "input.dtype");
  if (strcmp(buf, "float32") != 0) die("the model's input is %s: this recipe feeds float32 (ONNX bundles)", buf, NULL);
  double shape[8];
  int rank = json_array(json_path(m, "input", "shape", NULL), shape, 8);
  if (rank != 4) die("input.shape: 4 dimensions expected", NULL, NULL);
  c->nchw = (int)shape[1] == c->channels && (int)shape[3] != c->channels; /* edgecxr.runtimes.is_nchw */
  if (!json_null(json_path(m, "output", "quantization", NULL))) die("integer model outputs are out of scope", NULL, NULL);
  const char *kind = json_path(m, "output", "kind", NULL);
  if (kind) json_str(kind, c->kind, sizeof c->kind, "output.kind"); else strcpy(c->kind, "sigmoid");
  const char *pi = json_path(m, "output", "positive_index", NULL);
  c->positive_index = json_null(pi) ? 0 : (int)json_num(pi, "output.positive_index");
  /* The input formula, x = float32(float32(p) * scale) + offset (no fused multiply-add: built with
     -ffp-contract=off), checked against the manifest's 256-entry table. */
  double table[256];
  int nt = json_array(json_path(steps, "input", "table", NULL), table, 256);
  for (int i = 0; i < 256; i++) {
    volatile float prod = (float)i * c->scale;
    c->table[i] = prod + c->offset;
    if (nt == 256 && (float)table[i] != c->table[i]) die("input_contract's input table differs from scale and offset%s", "", NULL);
  }
  free(m);
}

/* -- decoded: JPEG by libjpeg (accurate integer IDCT, fancy upsampling, scaled IDCT), EXIF orientation, luma -- */
typedef struct { unsigned char *px; int w, h; } Gray;

struct jerr { struct jpeg_error_mgr mgr; jmp_buf jump; char msg[JMSG_LENGTH_MAX]; };

static void on_jpeg_error(j_common_ptr cinfo) {
  struct jerr *e = (struct jerr *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->msg);
  longjmp(e->jump, 1);
}

/* libjpeg only warns about a file cut short (and decodes grey for the rest): refuse it, as Pillow does. */
static void on_jpeg_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) on_jpeg_error(cinfo);
}

static unsigned rd16(const unsigned char *p, int le) { return le ? p[0] | p[1] << 8 : p[0] << 8 | p[1]; }
static unsigned long rd32(const unsigned char *p, int le) {
  return le ? (unsigned long)p[0] | p[1] << 8 | p[2] << 16 | (unsigned long)p[3] << 24
            : (unsigned long)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3];
}

/* Tag 0x0112 of IFD0 of TIFF-structured EXIF data ("II" or "MM" first); 0 when absent or unreadable. */
static int tiff_orientation(const unsigned char *t, size_t n) {
  if (!t || n < 8) return 0;
  int le = t[0] == 'I';
  if (!(le && t[1] == 'I') && !(t[0] == 'M' && t[1] == 'M')) return 0;
  unsigned long ifd = rd32(t + 4, le);
  if (ifd + 2 > n) return 0;
  unsigned count = rd16(t + ifd, le);
  for (unsigned i = 0; i < count && ifd + 2 + 12 * (i + 1) <= n; i++) {
    const unsigned char *e = t + ifd + 2 + 12 * i;
    if (rd16(e, le) == 0x0112) {
      unsigned type = rd16(e + 2, le);
      return type == 3 ? (int)rd16(e + 8, le) : type == 4 ? (int)rd32(e + 8, le) : 0;
    }
  }
  return 0;
}

/* Where EXIF has no orientation, Pillow's getexif (so edgecxr's runner) takes XMP's tiff:Orientation="N" (or
   >N<): the contract's text names EXIF only; this follows the runner. 0 when absent. */
static int xmp_orientation(const unsigned char *s, size_t n) {
  static const char key[] = "tiff:Orientation";
  for (size_t i = 0; s && i + sizeof key + 1 < n; i++) {
    if (memcmp(s + i, key, sizeof key - 1) != 0) continue;
    const unsigned char *p = s + i + sizeof key - 1;
    if (p[0] == '=' && p[1] == '"' && i + sizeof key + 2 < n && isdigit(p[2])) return p[2] - '0';
    if (p[0] == '>' && isdigit(p[1])) return p[1] - '0';
  }
  return 0;
}

/* The first APP1 "Exif" segment's orientation, else the first XMP segment's, else 1. */
static int jpeg_orientation(struct jpeg_decompress_struct *cinfo) {
  static const char xmp[] = "http://ns.adobe.com/xap/1.0/";
  const unsigned char *exif = NULL, *x = NULL;
  size_t nexif = 0, nx = 0;
  for (jpeg_saved_marker_ptr mk = cinfo->marker_list; mk; mk = mk->next) {
    if (mk->marker != JPEG_APP0 + 1) continue;
    if (!exif && mk->data_length >= 6 && memcmp(mk->data, "Exif\0\0", 6) == 0) {
      exif = mk->data + 6;
      nexif = mk->data_length - 6;
    } else if (!x && mk->data_length >= sizeof xmp && memcmp(mk->data, xmp, sizeof xmp) == 0) {
      x = mk->data + sizeof xmp;
      nx = mk->data_length - sizeof xmp;
    }
  }
  int o = tiff_orientation(exif, nexif);
  return o ? o : (o = xmp_orientation(x, nx)) ? o : 1;
}

/* TIFF orientation 2-8 -> upright, as edgecxr.data.contract.exif_transpose (numpy flips and rotations). */
static Gray transpose(Gray g, int o) {
  if (o < 2 || o > 8) return g;
  int swap = o >= 5, W = swap ? g.h : g.w, H = swap ? g.w : g.h;
  Gray r = {malloc((size_t)W * H), W, H};
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      int sy, sx;
      switch (o) {
        case 2: sy = y; sx = g.w - 1 - x; break;                 /* a[:, ::-1] */
        case 3: sy = g.h - 1 - y; sx = g.w - 1 - x; break;       /* a[::-1, ::-1] */
        case 4: sy = g.h - 1 - y; sx = x; break;                 /* a[::-1] */
        case 5: sy = x; sx = y; break;                           /* transpose */
        case 6: sy = g.h - 1 - x; sx = y; break;                 /* rot90(a, -1): clockwise */
        case 7: sy = g.h - 1 - x; sx = g.w - 1 - y; break;       /* transpose, then [::-1, ::-1] */
        default: sy = x; sx = g.w - 1 - y; break;                /* 8: rot90(a, 1) */
      }
      r.px[(size_t)y * W + x] = g.px[(size_t)sy * g.w + sx];
    }
  free(g.px);
  return r;
}

static int decode_jpeg(const unsigned char *data, size_t size, int draft, Gray *out, char *err, size_t errcap) {
  struct jpeg_decompress_struct cinfo;
  struct jerr jerr;
  cinfo.err = jpeg_std_error(&jerr.mgr);
  jerr.mgr.error_exit = on_jpeg_error;
  jerr.mgr.emit_message = on_jpeg_message;
  unsigned char *rgb = NULL;
  out->px = NULL;
  if (setjmp(jerr.jump)) {
    snprintf(err, errcap, "not a readable JPEG (%s)", jerr.msg);
    jpeg_destroy_decompress(&cinfo);
    free(rgb);
    free(out->px);
    return -1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)size);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.num_components != 1 && cinfo.num_components != 3) {
    snprintf(err, errcap, "%d-component JPEG (CMYK?): out of this recipe's scope", cinfo.num_components);
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  int ratio = (int)(cinfo.image_width / draft < cinfo.image_height / draft ? cinfo.image_width / draft
                                                                            : cinfo.image_height / draft);
  int s = ratio >= 8 ? 8 : ratio >= 4 ? 4 : ratio >= 2 ? 2 : 1; /* the largest of 8, 4, 2, 1 <= ratio */
  cinfo.scale_num = 1;
  cinfo.scale_denom = (unsigned)s;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  cinfo.out_color_space = cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  int w = (int)cinfo.output_width, h = (int)cinfo.output_height, nc = cinfo.output_components;
  out->w = w;
  out->h = h;
  out->px = malloc((size_t)w * h);
  rgb = malloc((size_t)w * nc);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = rgb;
    int y = (int)cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, &row, 1);
    for (int x = 0; x < w; x++) {
      const unsigned char *p = rgb + (size_t)x * nc;
      out->px[(size_t)y * w + x] = nc == 1 ? p[0] : (unsigned char)((19595u * p[0] + 38470u * p[1] + 7471u * p[2] + 32768u) >> 16);
    }
  }
  int orientation = jpeg_orientation(&cinfo);
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  free(rgb);
  *out = transpose(*out, orientation);
  return 0;
}

#ifdef WITH_PNG
/* -- decoded: PNG by libpng, as Pillow reads it ------------------------------------------------------------
   16-bit gray: to 8 bits by the contract's high-bit-depth rule (ranks, float32); other 16-bit types: the high
   byte (Pillow's ;16B unpackers); 1/2/4-bit gray scaled to 8 bits; a palette to RGB, or to RGBA where it has a
   tRNS chunk (tRNS of gray or RGB images is ignored, as Pillow's decode does); alpha composited over black. */
#include <png.h>

struct png_src { const unsigned char *data; size_t size, pos; char msg[256]; };

static void png_read_mem(png_structp png, png_bytep out, size_t n) {
  struct png_src *src = png_get_io_ptr(png);
  if (src->pos + n > src->size) png_error(png, "truncated file");
  memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg) {
  struct png_src *src = png_get_io_ptr(png);
  snprintf(src->msg, sizeof src->msg, "%s", msg);
  png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static unsigned char over_black(unsigned c, unsigned a) { /* Pillow's alpha_composite rounding */
  unsigned t = c * a + 128;
  return (unsigned char)((t + (t >> 8)) >> 8);
}

static int decode_png(const unsigned char *data, size_t size, Gray *out, char *err, size_t errcap) {
  struct png_src src = {data, size, 0, ""};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, png_on_error, png_on_warning);
  png_infop info = png_create_info_struct(png);
  png_bytep *volatile rows = NULL;
  unsigned char *volatile buf = NULL;
  out->px = NULL;
  png_set_read_fn(png, &src, png_read_mem);
  png_set_error_fn(png, &src, png_on_error, png_on_warning);
  if (setjmp(png_jmpbuf(png))) {
    snprintf(err, errcap, "not a readable PNG (%s)", src.msg);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows); free(buf); free(out->px);
    out->px = NULL;
    return -1;
  }
  png_read_info(png, info);
  png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  int depth = png_get_bit_depth(png, info), type = png_get_color_type(png, info);
  int gray16 = depth == 16 && type == PNG_COLOR_TYPE_GRAY;
  if (!gray16) {
    if (depth == 16) png_set_strip_16(png);                       /* the high byte */
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (type == PNG_COLOR_TYPE_PALETTE) {
      png_set_palette_to_rgb(png);
      if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    }
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  int nc = png_get_channels(png, info);
  buf = malloc(rowbytes * h);
  rows = malloc(sizeof(png_bytep) * h);
  for (png_uint_32 y = 0; y < h; y++) rows[y] = buf + y * rowbytes;
  png_read_image(png, rows);
  png_read_end(png, info); /* eXIf and text chunks after the image data */
  out->w = (int)w;
  out->h = (int)h;
  out->px = malloc((size_t)w * h);
  if (gray16) { /* low, high: the samples of rank k and N-1-k, k = (N-1) / 2000 (a histogram ranks 16-bit exactly) */
    size_t n = (size_t)w * h, k = (n - 1) / 2000, seen = 0;
    size_t *count = calloc(65536, sizeof *count);
    for (size_t i = 0; i < n; i++) count[buf[2 * i] << 8 | buf[2 * i + 1]]++;
    unsigned lo = 0, hi = 0;
    for (unsigned v = 0; v < 65536; v++) {
      if (count[v] && seen <= k && k < seen + count[v]) lo = v;
      if (count[v] && seen <= n - 1 - k && n - 1 - k < seen + count[v]) hi = v;
      seen += count[v];
    }
    free(count);
    float f = (float)(255.0 / ((double)hi - (double)lo)), low = (float)lo;
    for (size_t i = 0; i < n; i++) {
      unsigned c = buf[2 * i] << 8 | buf[2 * i + 1];
      c = c < lo ? lo : c > hi ? hi : c;
      volatile float v = (float)c - low;
      out->px[i] = hi <= lo ? 0 : (unsigned char)nearbyintf(v * f);
    }
  } else {
    for (size_t i = 0; i < (size_t)w * h; i++) {
      const unsigned char *p = buf + i * nc;
      unsigned r, g, b;
      if (nc <= 2) r = g = b = nc == 2 ? over_black(p[0], p[1]) : p[0];
      else if (nc == 3) { r = p[0]; g = p[1]; b = p[2]; }
      else { r = over_black(p[0], p[3]); g = over_black(p[1], p[3]); b = over_black(p[2], p[3]); }
      out->px[i] = (unsigned char)((19595u * r + 38470u * g + 7471u * b + 32768u) >> 16);
    }
  }
  png_bytep exif = NULL;
  png_uint_32 nexif = 0;
  png_textp text = NULL;
  int ntext = 0, o = 0;
  if (png_get_eXIf_1(png, info, &nexif, &exif)) o = tiff_orientation(exif, nexif);
  png_get_text(png, info, &text, &ntext);
  for (int i = 0; !o && i < ntext; i++)
    if (strcmp(text[i].key, "XML:com.adobe.xmp") == 0) o = xmp_orientation((const unsigned char *)text[i].text, strlen(text[i].text));
  png_destroy_read_struct(&png, &info, NULL);
  free(rows); free(buf);
  *out = transpose(*out, o ? o : 1);
  return 0;
}
#endif

/* -- cropped, equalized ----------------------------------------------------------------------------------- */
static Gray crop(Gray g, const double *box) { /* rows round(top H)..round(bottom H), round half to even */
  int t = (int)nearbyint(box[0] * g.h), b = (int)nearbyint(box[1] * g.h);
  int l = (int)nearbyint(box[2] * g.w), r = (int)nearbyint(box[3] * g.w);
  Gray c = {malloc((size_t)(r - l) * (b - t)), r - l, b - t};
  for (int y = 0; y < c.h; y++) memcpy(c.px + (size_t)y * c.w, g.px + (size_t)(y + t) * g.w + l, (size_t)c.w);
  return c;
}

static Gray equalize(Gray g) { /* the contract's table (Pillow's formula), not OpenCV's equalizeHist */
  long long h[256] = {0}, n = (long long)g.w * g.h;
  for (long long i = 0; i < n; i++) h[g.px[i]]++;
  int last = -1, used = 0;
  for (int i = 0; i < 256; i++)
    if (h[i]) { last = i; used++; }
  Gray e = {malloc((size_t)n), g.w, g.h};
  long long step = used > 1 ? (n - h[last]) / 255 : 0;
  unsigned char lut[256];
  for (long long i = 0, before = 0; i < 256; before += h[i], i++) {
    long long v = step ? (step / 2 + before) / step : i;
    lut[i] = (unsigned char)(v > 255 ? 255 : v);
  }
  for (long long i = 0; i < n; i++) e.px[i] = lut[g.px[i]];
  return e;
}

/* -- resized: separable antialiased bilinear, 22-bit fixed-point weights, horizontal pass first ------------- */
#define PRECISION_BITS 22

/* Resize each of `rows` rows of `in` (stride `istride`, step `istep` between pixels of a row) from n to out
   pixels, writing row r's pixel i at dst[r * dstride + i * dstep]. */
static void resize_axis(const unsigned char *in, int rows, int n, long istride, long istep, int out,
                        unsigned char *dst, long dstride, long dstep) {
  double scale = (double)n / out, fs = scale > 1.0 ? scale : 1.0, support = 1.0 * fs, inv = 1.0 / fs;
  int taps = (int)ceil(support) * 2 + 1;
  int *first = malloc(sizeof(int) * out), *last = malloc(sizeof(int) * out);
  long long *k = malloc(sizeof(long long) * (size_t)out * taps);
  double *w = malloc(sizeof(double) * taps);
  for (int i = 0; i < out; i++) {
    double center = (i + 0.5) * scale;
    double lo = trunc(center - support + 0.5), hi = trunc(center + support + 0.5);
    first[i] = lo < 0 ? 0 : (int)lo;
    last[i] = hi > n ? n : (int)hi;
    double total = 0.0;
    for (int j = 0; j < taps; j++) {
      int x = first[i] + j;
      double t = fabs(((double)x - center + 0.5) * inv);
      w[j] = x < last[i] && t < 1.0 ? 1.0 - t : 0.0;
      total += w[j]; /* summed left to right */
    }
    for (int j = 0; j < taps; j++) {
      double v = total != 0.0 ? w[j] / total : w[j];
      k[(size_t)i * taps + j] = (long long)trunc((v < 0 ? -0.5 : 0.5) + v * (1 << PRECISION_BITS));
    }
  }
  for (int r = 0; r < rows; r++) {
    const unsigned char *src = in + r * istride;
    for (int i = 0; i < out; i++) {
      long long acc = 1LL << (PRECISION_BITS - 1);
      for (int x = first[i]; x < last[i]; x++) acc += (long long)src[x * istep] * k[(size_t)i * taps + (x - first[i])];
      acc >>= PRECISION_BITS;
      dst[r * dstride + i * dstep] = (unsigned char)(acc < 0 ? 0 : acc > 255 ? 255 : acc);
    }
  }
  free(first); free(last); free(k); free(w);
}

static Gray resize(Gray g, int size) {
  if (g.w == size && g.h == size) {
    Gray c = {malloc((size_t)size * size), size, size};
    memcpy(c.px, g.px, (size_t)size * size);
    return c;
  }
  Gray mid = g;
  if (g.w != size) { /* horizontal pass */
    mid.w = size;
    mid.px = malloc((size_t)size * g.h);
    resize_axis(g.px, g.h, g.w, g.w, 1, size, mid.px, size, 1);
  }
  Gray r = mid;
  if (g.h != size) { /* vertical pass: each column is a "row" of the pass */
    r.h = size;
    r.px = malloc((size_t)size * mid.w);
    resize_axis(mid.px, mid.w, mid.h, 1, mid.w, size, r.px, 1, mid.w);
    if (mid.px != g.px) free(mid.px);
  } else if (mid.px == g.px) {
    r.px = malloc((size_t)g.w * g.h);
    memcpy(r.px, g.px, (size_t)g.w * g.h);
  }
  return r;
}

/* -- .npy files ------------------------------------------------------------------------------------------- */
static void write_npy(const char *dir, const char *stage, const char *descr, const long *shape, int rank,
                      const void *data, size_t nbytes) {
  char path[4096], dims[128] = "", header[256];
  for (int i = 0; i < rank; i++) snprintf(dims + strlen(dims), sizeof dims - strlen(dims), "%ld,%s", shape[i], i + 1 < rank ? " " : "");
  if (rank > 1) dims[strlen(dims) - 1] = 0; /* (224, 224) but (1,) */
  int n = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims);
  while ((10 + n + 1) % 64) header[n++] = ' '; /* magic + version + length, padded to 64 bytes, then '\n' */
  header[n++] = '\n';
  snprintf(path, sizeof path, "%s/%s.npy", dir, stage);
  FILE *f = fopen(path, "wb");
  if (!f) die("%s: %s", path, strerror(errno));
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(n & 0xff), (unsigned char)(n >> 8)};
  fwrite(pre, 1, 10, f);
  fwrite(header, 1, (size_t)n, f);
  fwrite(data, 1, nbytes, f); /* little-endian: x86-64 and ARM as they run */
  fclose(f);
}

static void write_gray(const char *dir, const char *stage, Gray g) {
  long shape[2] = {g.h, g.w};
  write_npy(dir, stage, "|u1", shape, 2, g.px, (size_t)g.w * g.h);
}

/* -- the model: ONNX Runtime's C API ------------------------------------------------------------------------ */
static const OrtApi *ort;

static void check(OrtStatus *st, const char *what) {
  if (st) {
    fprintf(stderr, "recipe: onnxruntime: %s: %s\n", what, ort->GetErrorMessage(st));
    ort->ReleaseStatus(st);
    exit(2);
  }
}

typedef struct { OrtEnv *env; OrtSession *session; OrtMemoryInfo *mem; char *in, *out; OrtAllocator *alloc; } Model;

static void open_model(Model *m, const char *path, int threads) {
  const OrtApiBase *base = OrtGetApiBase();
  ort = base->GetApi(ORT_API_VERSION);
  if (!ort) {
    fprintf(stderr, "recipe: libonnxruntime %s does not serve C API version %d (built with a newer header)\n",
            base->GetVersionString(), ORT_API_VERSION);
    exit(2);
  }
  OrtSessionOptions *opt;
  check(ort->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "recipe", &m->env), "CreateEnv");
  check(ort->CreateSessionOptions(&opt), "CreateSessionOptions");
  if (threads > 0) {
    check(ort->SetIntraOpNumThreads(opt, threads), "SetIntraOpNumThreads");
    check(ort->SetInterOpNumThreads(opt, 1), "SetInterOpNumThreads");
  }
  check(ort->CreateSession(m->env, path, opt, &m->session), path);
  ort->ReleaseSessionOptions(opt);
  size_t nin, nout;
  check(ort->SessionGetInputCount(m->session, &nin), "SessionGetInputCount");
  check(ort->SessionGetOutputCount(m->session, &nout), "SessionGetOutputCount");
  if (nin != 1 || nout < 1) die("%s: one input and an output expected", path, NULL);
  check(ort->GetAllocatorWithDefaultOptions(&m->alloc), "GetAllocatorWithDefaultOptions");
  check(ort->SessionGetInputName(m->session, 0, m->alloc, &m->in), "SessionGetInputName");
  check(ort->SessionGetOutputName(m->session, 0, m->alloc, &m->out), "SessionGetOutputName");
  check(ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &m->mem), "CreateCpuMemoryInfo");
}

static void close_model(Model *m) {
  check(ort->AllocatorFree(m->alloc, m->in), "AllocatorFree");
  check(ort->AllocatorFree(m->alloc, m->out), "AllocatorFree");
  ort->ReleaseMemoryInfo(m->mem);
  ort->ReleaseSession(m->session);
  ort->ReleaseEnv(m->env);
}

/* Runs the model on x; returns the output's element count (values in *y, malloc'd). */
static size_t run_model(Model *m, float *x, const int64_t *shape, float **y) {
  OrtValue *in = NULL, *out = NULL;
  size_t n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
  check(ort->CreateTensorWithDataAsOrtValue(m->mem, x, n * sizeof(float), shape, 4, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &in),
        "CreateTensorWithDataAsOrtValue");
  const char *ins[1] = {m->in}, *outs[1] = {m->out};
  check(ort->Run(m->session, NULL, ins, (const OrtValue *const *)&in, 1, outs, 1, &out), "Run");
  OrtTensorTypeAndShapeInfo *info;
  ONNXTensorElementDataType type;
  size_t count;
  check(ort->GetTensorTypeAndShape(out, &info), "GetTensorTypeAndShape");
  check(ort->GetTensorElementType(info, &type), "GetTensorElementType");
  check(ort->GetTensorShapeElementCount(info, &count), "GetTensorShapeElementCount");
  ort->ReleaseTensorTypeAndShapeInfo(info);
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || count < 1) die("the model's output is not a float32 tensor", NULL, NULL);
  float *data;
  check(ort->GetTensorMutableData(out, (void **)&data), "GetTensorMutableData");
  *y = malloc(count * sizeof(float));
  memcpy(*y, data, count * sizeof(float));
  ort->ReleaseValue(out);
  ort->ReleaseValue(in);
  return count;
}

/* edgecxr.formats.modelinfo.to_prob: one value is the probability (sigmoid) or a logit; K values: softmax of logits. */
static double probability(const float *y, size_t k, const Contract *c) {
  if (k == 1) return strcmp(c->kind, "sigmoid") == 0 ? (double)y[0] : 1.0 / (1.0 + exp(-(double)y[0]));
  if (c->positive_index < 0 || (size_t)c->positive_index >= k) die("output.positive_index out of range", NULL, NULL);
  if (strcmp(c->kind, "logits") != 0) return (double)y[c->positive_index];
  double mx = y[0], sum = 0.0;
  for (size_t i = 1; i < k; i++) mx = y[i] > mx ? y[i] : mx;
  for (size_t i = 0; i < k; i++) sum += exp((double)y[i] - mx);
  return exp((double)y[c->positive_index] - mx) / sum;
}

static int is_jpeg(const unsigned char *d, size_t n) { return n >= 3 && d[0] == 0xFF && d[1] == 0xD8; }
#ifdef WITH_PNG
static int is_png(const unsigned char *d, size_t n) { return n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0; }
#define FORMATS "JPEG and PNG"
#define DECODES(d, n) (is_jpeg(d, n) || is_png(d, n))
#else
#define FORMATS "JPEG (built without libpng: PNG too when png.h is there)"
#define DECODES(d, n) is_jpeg(d, n)
#endif

/* -- one image through every stage --------------------------------------------------------------------------- */
static int classify(Model *m, const Contract *c, const char *path, const char *outdir, double *prob) {
  size_t size;
  unsigned char *data = read_all(path, &size);
  Gray g;
  char err[JMSG_LENGTH_MAX + 128];
  int ok = -2;
  if (is_jpeg(data, size)) ok = decode_jpeg(data, size, c->draft, &g, err, sizeof err);
#ifdef WITH_PNG
  else if (is_png(data, size)) ok = decode_png(data, size, &g, err, sizeof err);
#endif
  if (ok == -2) {
    fprintf(stderr, "recipe: %s: this C recipe decodes %s only (DICOM: use examples/opencv_recipe.py or "
                    "edgecxr)\n", path, FORMATS);
    free(data);
    return -1;
  }
  if (ok != 0) {
    fprintf(stderr, "recipe: %s: %s\n", path, err);
    free(data);
    return -1;
  }
  free(data);
  if (outdir) write_gray(outdir, "decoded", g);
  if (c->crop) {
    Gray t = crop(g, c->crop_box);
    free(g.px);
    g = t;
    if (outdir) write_gray(outdir, "cropped", g);
  }
  if (c->equalize) {
    Gray t = equalize(g);
    free(g.px);
    g = t;
    if (outdir) write_gray(outdir, "equalized", g);
  }
  Gray r = resize(g, c->size);
  free(g.px);
  if (outdir) write_gray(outdir, "resized", r);
  int S = c->size, C = c->channels;
  size_t plane = (size_t)S * S;
  float *x = malloc(sizeof(float) * plane * C);
  for (size_t i = 0; i < plane; i++)
    for (int ch = 0; ch < C; ch++) x[c->nchw ? ch * plane + i : i * C + ch] = c->table[r.px[i]];
  free(r.px);
  int64_t shape[4] = {1, c->nchw ? C : S, c->nchw ? S : S, c->nchw ? S : C};
  if (outdir) {
    long s[4] = {1, (long)shape[1], (long)shape[2], (long)shape[3]};
    write_npy(outdir, "input", "<f4", s, 4, x, sizeof(float) * plane * C);
  }
  float *y;
  size_t k = run_model(m, x, shape, &y);
  free(x);
  *prob = probability(y, k, c);
  int64_t decision = *prob >= c->threshold;
  if (outdir) {
    long s[2] = {1, (long)k};
    write_npy(outdir, "output", "<f4", s, 2, y, k * sizeof(float));
    write_npy(outdir, "probability", "<f8", NULL, 0, prob, sizeof(double));
    write_npy(outdir, "decision", "<i8", NULL, 0, &decision, sizeof decision);
  }
  free(y);
  return (int)decision;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: recipe BUNDLE --conformance OUT [--threads N]\n"
                    "       recipe BUNDLE [--threads N] [--out DIR] IMAGE...\n");
    return 2;
  }
  const char *bundle = argv[1], *conform = NULL, *stages = NULL;
  int threads = 0, nfiles = 0;
  char **files = malloc(sizeof(char *) * (size_t)argc);
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--conformance") == 0 && i + 1 < argc) conform = argv[++i];
    else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
    else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) stages = argv[++i];
    else files[nfiles++] = argv[i];
  }
  Contract c;
  load_contract(bundle, &c);
  Model m;
  open_model(&m, c.model, threads);
  int failed = 0;
  if (conform) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/conformance/images", bundle);
    DIR *d = opendir(dir);
    if (!d) die("%s: %s", dir, strerror(errno));
    struct dirent *e;
    char **names = malloc(sizeof(char *) * 256);
    int n = 0;
    while ((e = readdir(d)) && n < 256)
      if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof(char *), by_name);
    mkdir(conform, 0755);
    int done = 0;
    for (int i = 0; i < n; i++) {
      char path[8192], out[8192];
      snprintf(path, sizeof path, "%s/%s", dir, names[i]);
      snprintf(out, sizeof out, "%s/%s", conform, names[i]);
      size_t sz;
      unsigned char *head = read_all(path, &sz);
      int decodes = DECODES(head, sz);
      free(head);
      if (!decodes) {
        printf("%s\tskipped\tthis C recipe decodes %s only\n", names[i], FORMATS);
        continue;
      }
      mkdir(out, 0755);
      double p;
      int dec = classify(&m, &c, path, out, &p);
      if (dec < 0) { failed++; continue; }
      printf("%s\t%.9g\t%d\n", names[i], p, dec);
      done++;
    }
    fprintf(stderr, "wrote %s: %d images\n", conform, done);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
  }
  if (stages) mkdir(stages, 0755);
  for (int i = 0; i < nfiles; i++) {
    double p;
    char out[8192];
    const char *base = strrchr(files[i], '/') ? strrchr(files[i], '/') + 1 : files[i];
    snprintf(out, sizeof out, "%s/%s", stages ? stages : "", base);
    if (stages) mkdir(out, 0755);
    int dec = classify(&m, &c, files[i], stages ? out : NULL, &p);
    if (dec < 0) { failed++; continue; }
    printf("%s\t%.9g\t%d\n", files[i], p, dec);
  }
  close_model(&m);
  free(files);
  return failed ? 1 : 0;
}
