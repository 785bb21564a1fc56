"""A CPU kernel for decode attention over the paged KV cache, compiled on first use.

Decode attention is a few MFLOP per layer, yet torch has no CPU op that reads a
sequence's keys where they lie in the block pool: the sparse form (``attention.py``)
spends ~1.5 ms a layer on 32 sequences of ~100 tokens in CSR bookkeeping, a third of a
step. This kernel does what vLLM's CPU backend does in C++: for every (sequence, query
head) it walks the block table, takes dot products with the keys in place, softmaxes and
sums the values, with OpenMP across rows (torch's own OpenMP runtime, so the two share
one thread pool) and the compiler's SIMD over the head dimension. Measured on this
2-core machine at 32 streams: ~0.2 ms a layer.

It is plain C called through ``ctypes`` (no torch headers: it compiles in ~0.3 s with
``cc -O3 -march=native -fopenmp``), built once per machine into
``$RAYLITE_KERNEL_DIR`` (default ``~/.cache/raylite/kernels``) and shared by every
process. Without a C compiler ``load()`` returns None and the engine uses the sparse
form; float32 only (other dtypes use the sparse form too).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import torch

log = logging.getLogger(__name__)

SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* out[b, h, :] = softmax(scale * q[b, h] . K[slots of b]) @ V[slots of b]
   q, out: [B, H, D]; k_pool, v_pool: [num_slots, HK, D] (slot = block * BS + offset);
   tables: [B, W] block ids; lens: [B] keys per sequence; scratch: [B, H, max_len].
   One sequence per iteration, all its heads together: a slot's K (or V) rows for every
   head are one contiguous run of HK * D floats, and a block's BS slots are adjacent, so
   the pools are read in long sequential runs. */
void paged_decode_f32(const float *q, const float *k_pool, const float *v_pool,
                      const int64_t *tables, const int64_t *lens, float *out,
                      float *scratch, int64_t B, int64_t H, int64_t HK, int64_t D,
                      int64_t W, int64_t BS, int64_t max_len, float scale,
                      int nthreads) {
    const int64_t group = H / HK;
    #pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; b++) {
        const int64_t len = lens[b];
        const float *qb = q + b * H * D;
        float *sb = scratch + b * H * max_len;
        float *ob = out + b * H * D;
        for (int64_t t0 = 0; t0 < len; t0 += BS) {         /* block by block */
            const float *kb = k_pool + tables[b * W + t0 / BS] * BS * HK * D;
            const int64_t n = len - t0 < BS ? len - t0 : BS;
            for (int64_t i = 0; i < n; i++) {
                const float *ks = kb + i * HK * D;
                for (int64_t h = 0; h < H; h++) {
                    const float *kr = ks + (h / group) * D, *qr = qb + h * D;
                    float acc = 0.0f;
                    #pragma omp simd reduction(+:acc)
                    for (int64_t d = 0; d < D; d++) acc += qr[d] * kr[d];
                    sb[h * max_len + t0 + i] = acc * scale;
                }
            }
        }
        for (int64_t h = 0; h < H; h++) {
            float *s = sb + h * max_len, mx = -INFINITY, sum = 0.0f;
            for (int64_t t = 0; t < len; t++) mx = s[t] > mx ? s[t] : mx;
            for (int64_t t = 0; t < len; t++) { s[t] = expf(s[t] - mx); sum += s[t]; }
            const float inv = 1.0f / sum;
            for (int64_t t = 0; t < len; t++) s[t] *= inv;
            float *o = ob + h * D;
            #pragma omp simd
            for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
        }
        for (int64_t t0 = 0; t0 < len; t0 += BS) {
            const float *vb = v_pool + tables[b * W + t0 / BS] * BS * HK * D;
            const int64_t n = len - t0 < BS ? len - t0 : BS;
            for (int64_t i = 0; i < n; i++) {
                const float *vs = vb + i * HK * D;
                for (int64_t h = 0; h < H; h++) {
                    const float *vr = vs + (h / group) * D;
                    const float p = sb[h * max_len + t0 + i];
                    float *o = ob + h * D;
                    #pragma omp simd
                    for (int64_t d = 0; d < D; d++) o[d] += p * vr[d];
                }
            }
        }
    }
}
"""

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def kernel_dir() -> str:
    return os.environ.get("RAYLITE_KERNEL_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "raylite", "kernels")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str) -> str:
    """The shared library's path, compiled now unless this machine already has it (the
    name hashes the source, the flags, the compiler and the CPU)."""
    key = hashlib.sha256("\0".join([SOURCE, *FLAGS, cc, platform.machine(),
                                    _cpu_id()]).encode()).hexdigest()[:16]
    out_dir = kernel_dir()
    path = os.path.join(out_dir, f"paged_decode_{key}.so")
    if os.path.exists(path):
        return path
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = os.path.join(tmp, "paged_decode.c")
        with open(src, "w") as f:
            f.write(SOURCE)
        lib = os.path.join(tmp, "paged_decode.so")
        subprocess.run([cc, *FLAGS, "-o", lib, src, "-lm"], check=True,
                       capture_output=True, timeout=120)
        os.replace(lib, path)  # atomic: processes compiling at once each rename theirs
    return path


def _cpu_id() -> str:
    """The CPU's model and instruction-set flags: a kernel built with -march=native for
    one CPU may not run on another (a home directory shared by different machines)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags") and key not in found:
                    found[key] = line
                if len(found) == 2:
                    break
    except OSError:
        pass
    return "".join(found.values()) or platform.processor()


def load() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be built (no compiler, a failed
    build: logged once). ``RAYLITE_CPU_KERNEL=0`` turns it off."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("RAYLITE_CPU_KERNEL", "1") == "0":
            return None
        cc = _compiler()
        if cc is None:
            log.info("no C compiler: decode attention uses the sparse torch form")
            return None
        try:
            lib = ctypes.CDLL(_build(cc))
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            log.warning("could not build the CPU attention kernel (%s %s); decode "
                        "attention uses the sparse torch form", e,
                        detail.decode(errors="replace")[-500:])
            return None
        fn = lib.paged_decode_f32
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 7 + [ctypes.c_float,
                                                                     ctypes.c_int]
        _lib = lib
        return _lib


def available() -> bool:
    return load() is not None


def paged_decode(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                 tables: torch.Tensor, lens: torch.Tensor, max_len: int,
                 block_size: int, scale: float) -> torch.Tensor:
    """Decode attention for ``q`` [B, H, D] over the pools [slots, HK, D] (float32,
    contiguous, on the CPU); ``tables`` [B, W] and ``lens`` [B] int64. Returns [B, H, D]."""
    lib = load()
    B, H, D = q.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    scratch = torch.empty(B * H * max(1, max_len), dtype=torch.float32)
    lib.paged_decode_f32(q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(),
                         tables.data_ptr(), lens.data_ptr(), out.data_ptr(),
                         scratch.data_ptr(), B, H, k_pool.shape[1], D, tables.shape[1],
                         block_size, max_len, scale, torch.get_num_threads())
    return out
