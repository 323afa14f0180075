#!/usr/bin/env bash
# Build examples/c/recipe.c against libjpeg(-turbo) and the libonnxruntime.so that the onnxruntime Python wheel
# ships (onnxruntime/capi/libonnxruntime.so.1.*; the wheel has no header: the reduced one in third_party/ is used,
# or the full official header with ORT_INCLUDE=DIR).
#
#   examples/c/build.sh [OUT_DIR]          # default build/c-recipe; writes OUT_DIR/recipe
#   PYTHON=.venv/bin/python CC=clang ORT_INCLUDE=/path/to/onnxruntime/include examples/c/build.sh
#
# Needs: a C compiler, jpeglib.h (Debian: apt-get install libjpeg62-turbo-dev), the onnxruntime wheel; png.h optional.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-build/c-recipe}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
python="${PYTHON:-python3}"
capi="$("$python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')"
lib="$(ls "$capi"/libonnxruntime.so* | head -n 1)"
[ -f "$lib" ] || { echo "build.sh: no libonnxruntime.so in $capi" >&2; exit 1; }
# The library's soname is libonnxruntime.so.1 but the wheel names the file libonnxruntime.so.1.X.Y: link to a
# symlink of that name beside the binary (found at run time through the rpath $ORIGIN).
ln -sf "$lib" "$out/libonnxruntime.so.1"
# PNG (8- and 16-bit) when libpng's header is there (Debian: libpng-dev); WITH_PNG=0 leaves it out.
png=()
if [ "${WITH_PNG:-1}" != 0 ] && printf '#include <png.h>\n' | "${CC:-cc}" -E -x c - -o /dev/null 2>/dev/null; then
  png=(-DWITH_PNG $(pkg-config --cflags --libs libpng 2>/dev/null || echo -lpng))
fi
"${CC:-cc}" -std=c11 -D_DEFAULT_SOURCE -O2 -Wall -Wextra -ffp-contract=off \
  -I"${ORT_INCLUDE:-$here/third_party/onnxruntime}" \
  -o "$out/recipe" "$here/recipe.c" \
  -L"$out" -l:libonnxruntime.so.1 -ljpeg "${png[@]}" -lm -Wl,-rpath,'$ORIGIN'
echo "$out/recipe (onnxruntime: $lib; header: ${ORT_INCLUDE:-$here/third_party/onnxruntime}; PNG: ${png[*]:-no})"
