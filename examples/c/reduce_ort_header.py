"""Write examples/c/third_party/onnxruntime/onnxruntime_c_api.h: the few declarations of ONNX Runtime's C API
that recipe.c uses, cut mechanically from the official header (MIT, Microsoft), so that the repository does not
carry its 560 KB.

    python examples/c/reduce_ort_header.py FULL/onnxruntime_c_api.h [FULL/onnxruntime_error_code.h]

What is kept: the enums recipe.c names, opaque handle types, OrtApiBase, and struct OrtApi in its exact member
order up to the last member recipe.c calls (members it does not call keep their names but become `void (*)(void)`:
every member is a function pointer, so the layout, and therefore the ABI, is unchanged; members after the last one
used are left out, which is safe because the library owns the struct and recipe.c only reads it through a pointer).
OrtApi is append-only across releases, so a library of this header's ORT_API_VERSION or later serves it.
"""
import re
import sys
from pathlib import Path

USED = ["GetErrorMessage", "CreateEnv", "CreateSession", "Run", "CreateSessionOptions", "SetIntraOpNumThreads",
        "SetInterOpNumThreads", "SessionGetInputCount", "SessionGetOutputCount", "SessionGetInputName",
        "SessionGetOutputName", "CreateTensorWithDataAsOrtValue", "GetTensorMutableData",
        "GetTensorTypeAndShape", "GetTensorElementType", "GetDimensionsCount", "GetDimensions",
        "GetTensorShapeElementCount", "CreateCpuMemoryInfo", "AllocatorFree", "GetAllocatorWithDefaultOptions",
        "ReleaseEnv", "ReleaseStatus", "ReleaseMemoryInfo", "ReleaseSession", "ReleaseValue",
        "ReleaseTensorTypeAndShapeInfo", "ReleaseSessionOptions"]
ENUMS = ["ONNXTensorElementDataType", "OrtLoggingLevel", "OrtErrorCode", "OrtAllocatorType", "OrtMemType"]
HANDLES = ["Env", "Status", "MemoryInfo", "Session", "Value", "RunOptions", "TensorTypeAndShapeInfo",
           "SessionOptions"]


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def members(body: str) -> list[str]:
    """The declarations of a struct body, split at top-level semicolons."""
    out, depth, cur = [], 0, []
    for ch in body:
        depth += ch == "("
        depth -= ch == ")"
        if ch == ";" and depth == 0:
            out.append(" ".join("".join(cur).split()))
            cur = []
        else:
            cur.append(ch)
    return [m for m in out if m]


def member_name(decl: str) -> str:
    m = re.match(r"ORT_API2_STATUS\(\s*(\w+)", decl) or re.match(r"ORT_CLASS_RELEASE\(\s*(\w+)\s*\)", decl) \
        or re.match(r"ORT_API_T\(\s*[^,]+,\s*(\w+)", decl) or re.search(r"\(\s*ORT_API_CALL\s*\*\s*(\w+)\s*\)", decl)
    if not m:
        raise SystemExit(f"cannot name this OrtApi member: {decl[:120]}")
    return ("Release" + m.group(1)) if decl.startswith("ORT_CLASS_RELEASE") else m.group(1)


def plain(decl: str) -> str:
    """A member declaration with the header's annotation macros spelled out as plain C."""
    decl = re.sub(r"\b_(In|Out|Inout|Outptr|Frees_ptr|Ret|Check|Success|Out_writes|In_reads|Inout_updates)\w*"
                  r"(\([^()]*\))?\s*", "", decl)
    decl = re.sub(r"\b(NO_EXCEPTION|ORT_ALL_ARGS_NONNULL|ORT_MUST_USE_RESULT)\b", "", decl)
    m = re.match(r"ORT_API2_STATUS\(\s*(\w+)\s*,\s*(.*)\)\s*$", decl, flags=re.S)
    if m:
        return f"OrtStatus* (*{m.group(1)})({m.group(2).strip()})"
    m = re.match(r"ORT_CLASS_RELEASE\(\s*(\w+)\s*\)", decl)
    if m:
        return f"void (*Release{m.group(1)})(Ort{m.group(1)}* input)"
    decl = re.sub(r"\(\s*ORT_API_CALL\s*\*\s*", " (*", decl)
    return " ".join(decl.split())


def enum(text: str, name: str) -> str:
    m = re.search(r"typedef enum " + name + r"\s*\{(.*?)\}\s*" + name + r"\s*;", text, flags=re.S)
    if not m:
        raise SystemExit(f"enum {name} not found")
    items = [" ".join(i.split()) for i in m.group(1).split(",") if i.strip()]
    return f"typedef enum {name} {{\n" + "".join(f"  {i},\n" for i in items) + f"}} {name};"


def main(argv):
    full = Path(argv[0]).read_text()
    extra = "".join(Path(p).read_text() for p in argv[1:])
    version = int(re.search(r"#define ORT_API_VERSION (\d+)", full).group(1))
    text = strip_comments(full + extra)
    body = re.search(r"struct OrtApi \{(.*?)\n\};", text, flags=re.S).group(1)
    decls = members(body)
    names = [member_name(d) for d in decls]
    missing = [u for u in USED if u not in names]
    if missing:
        raise SystemExit(f"not in this header's OrtApi: {', '.join(missing)}")
    last = max(names.index(u) for u in USED)
    lines = []
    for i, (name, decl) in enumerate(zip(names[:last + 1], decls[:last + 1])):
        lines.append(f"  {plain(decl)};" if name in USED else f"  void (*{name})(void); /* [{i}] unused here */")
    enums = "\n\n".join(enum(text, e) for e in ENUMS)
    handles = "\n".join(f"typedef struct Ort{h} Ort{h};" for h in HANDLES)
    out = f"""/* REDUCED copy of ONNX Runtime's C API header (onnxruntime_c_api.h, ORT_API_VERSION {version}), written by
 * examples/c/reduce_ort_header.py: only what examples/c/recipe.c uses, OrtApi's member order kept up to the
 * last member it calls. Build against the full official header instead with ORT_INCLUDE=DIR examples/c/build.sh.
 *
 * Copyright (c) Microsoft Corporation. All rights reserved.
 * Licensed under the MIT License (see LICENSE-onnxruntime beside this file).
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#define ORT_API_VERSION {version}
#define ORT_API_CALL
#define ORTCHAR_T char

#ifdef __cplusplus
extern "C" {{
#endif

{enums}

{handles}

typedef struct OrtAllocator {{
  uint32_t version;
  void* (*Alloc)(struct OrtAllocator* this_, size_t size);
  void (*Free)(struct OrtAllocator* this_, void* p);
  const struct OrtMemoryInfo* (*Info)(const struct OrtAllocator* this_);
}} OrtAllocator;

struct OrtApi;
typedef struct OrtApi OrtApi;

typedef struct OrtApiBase {{
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
}} OrtApiBase;

const OrtApiBase* OrtGetApiBase(void);

struct OrtApi {{
{chr(10).join(lines)}
  /* ... later members left out */
}};

#ifdef __cplusplus
}}
#endif
"""
    dest = Path(__file__).parent / "third_party" / "onnxruntime" / "onnxruntime_c_api.h"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(out)
    print(f"wrote {dest}: OrtApi members 0..{last} of {len(names)}, {len(USED)} typed; ORT_API_VERSION {version}")


if __name__ == "__main__":
    main(sys.argv[1:])
