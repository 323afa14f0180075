"""The CPU features that decide which int8 kernels a runtime picks (and so, on some CPUs, its answers).

Read from the CPU itself (the CPUID instruction on x86, the kernel's hardware capabilities on ARM), not
from /proc/cpuinfo, which an emulator passes through from the host. Falls back to /proc/cpuinfo
where executable memory or getauxval is unavailable.
"""
from __future__ import annotations

import ctypes
import mmap
import platform
import sys
from functools import lru_cache
from pathlib import Path

# x86: (leaf, subleaf, register index eax=0 ebx=1 ecx=2 edx=3, bit) per feature
X86_BITS = {
    "sse4_2": (1, 0, 2, 20), "avx": (1, 0, 2, 28), "fma": (1, 0, 2, 12), "avx2": (7, 0, 1, 5),
    "avx512f": (7, 0, 1, 16), "avx512bw": (7, 0, 1, 30), "avx512_vnni": (7, 0, 2, 11),
    "avx512_bf16": (7, 1, 0, 5), "avx_vnni": (7, 1, 0, 4), "amx_bf16": (7, 0, 3, 22), "amx_int8": (7, 0, 3, 25),
}
# aarch64: (AT_HWCAP=16 or AT_HWCAP2=26, bit), from linux/arch/arm64/include/uapi/asm/hwcap.h
ARM_BITS = {"asimd": (16, 1), "asimddp": (16, 20), "sve": (16, 22), "sve2": (26, 1), "i8mm": (26, 13), "bf16": (26, 14)}

# push rbx; mov r8,rdx; mov eax,edi; mov ecx,esi; cpuid; store eax,ebx,ecx,edx at [r8]; pop rbx; ret
_CPUID_CODE = bytes.fromhex("53 4989d0 89f8 89f1 0fa2 418900 41895804 41894808 4189500c 5b c3")


def _cpuid_fn():
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(_CPUID_CODE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(addr)

    def cpuid(leaf, sub=0):
        regs = (ctypes.c_uint32 * 4)()
        fn(leaf, sub, regs)
        return list(regs)

    cpuid.keep = buf  # the code page must outlive the function
    return cpuid


def _x86() -> tuple[list[str], str, str]:
    cpuid = _cpuid_fn()
    top = cpuid(0)[0]
    regs = {(leaf, sub): cpuid(leaf, sub) for leaf, sub in {(1, 0), (7, 0), (7, 1)} if leaf <= top}
    features = [name for name, (leaf, sub, reg, bit) in X86_BITS.items()
                if (leaf, sub) in regs and regs[(leaf, sub)][reg] >> bit & 1]
    brand = b""
    if cpuid(0x80000000)[0] >= 0x80000004:
        brand = b"".join(r.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004) for r in cpuid(leaf))
    return features, brand.rstrip(b"\0").decode(errors="replace").strip(), "cpuid"


def _arm() -> tuple[list[str], str, str]:
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    caps = {16: getauxval(16), 26: getauxval(26)}
    return [name for name, (at, bit) in ARM_BITS.items() if caps[at] >> bit & 1], "", "hwcap"


def _proc_cpuinfo() -> tuple[list[str], str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return [], "", "unknown"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    names = [n for n in (*X86_BITS, *ARM_BITS) if n in flags]
    return names, fields.get("model name", fields.get("Model", "")), "/proc/cpuinfo"


def int8_path(machine: str, features) -> str:
    """The instruction set a runtime's int8 kernels use on this CPU: results can differ between paths."""
    f = set(features)
    if machine in ("x86_64", "amd64", "AMD64", "i686", "x86"):
        for name, label in (("amx_int8", "x86 AMX"), ("avx512_vnni", "x86 AVX-512 VNNI"), ("avx_vnni", "x86 AVX-VNNI"),
                            ("avx512bw", "x86 AVX-512 without VNNI"), ("avx2", "x86 AVX2 without VNNI")):
            if name in f:
                return label
        return "x86 SSE"
    if machine in ("aarch64", "arm64"):
        for name, label in (("i8mm", "ARM i8mm"), ("asimddp", "ARM dot product"), ("asimd", "ARM NEON without dot product")):
            if name in f:
                return label
    return f"{machine or 'unknown'}"


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{"machine", "model", "features", "int8_path", "source"} of the CPU this process runs on."""
    machine = platform.machine()
    native64 = ctypes.sizeof(ctypes.c_void_p) == 8  # a 32-bit process on a 64-bit kernel: wrong stub, wrong HWCAP bits
    try:
        if machine in ("x86_64", "amd64", "AMD64") and native64:
            features, model, source = _x86()
        elif machine in ("aarch64", "arm64") and platform.system() == "Linux" and native64:
            features, model, source = _arm()
        else:
            features, model, source = _proc_cpuinfo()
    except (OSError, AttributeError, ValueError, TypeError):  # no executable memory, no getauxval
        features, model, source = _proc_cpuinfo()
    if not model:
        model = _proc_cpuinfo()[1] or platform.processor()
    return {"machine": machine, "model": model, "features": features, "int8_path": int8_path(machine, features),
            "source": source}


def path_note(exported: dict | None, here: dict) -> str | None:
    """One line when this CPU's int8 path differs from the one the bundle was verified on, else None."""
    if not exported or not exported.get("int8_path"):
        return None
    if exported["int8_path"] == here["int8_path"]:
        return f"CPU path: {here['int8_path']}, the same as on the machine that exported the bundle"
    return (f"CPU path: {here['int8_path']} here, {exported['int8_path']} where the bundle was exported: "
            "the runtime's kernels differ, so this result was not known in advance")


def host_info() -> dict:
    """What a report records about the machine it ran on: versions, CPU (cpu_info), board name."""
    import numpy as np

    from edgecxr import __version__

    info = {"edgecxr": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "numpy": np.__version__, "cpu": cpu_info()}
    try:
        import PIL

        info["pillow"] = PIL.__version__
    except ImportError:  # pragma: no cover
        pass
    model = Path("/proc/device-tree/model")  # Raspberry Pi / Jetson board name
    if model.is_file():
        info["board"] = model.read_bytes().rstrip(b"\0").decode(errors="replace")
    return info
