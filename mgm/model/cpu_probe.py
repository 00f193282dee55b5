"""What the running CPU is and which linear kernel it runs fastest, probed once per process and dtype.

`cpu_info()` reads the CPU model and the ISA flags that decide the kernels (AVX2, AVX-512, AVX512-BF16,
AVX512-FP16, AMX). `linear_plan(dtype)` times each candidate kernel of `mgm.model.fast_linear` that computes
correctly on this CPU, for three row classes (one row: a decoding step; few rows; many rows: prefill, towers),
on weights larger than the caches (decoding streams them from memory), and keeps `stock` (F.linear) unless
another candidate is clearly faster (min time at most `MARGIN` of stock's: a noisy machine must not flip a
tie). A candidate that raises (oneDNN has no bf16 inner product without AVX512-BF16) or disagrees with a
float64 reference is never chosen.

The plan is cached on disk (`$MGM_CACHE_DIR`, else `$XDG_CACHE_HOME/mgm`, else `~/.cache/mgm`) under a key of
the CPU model and flags, torch version, thread count and the ISA-limiting variables (`ONEDNN_MAX_CPU_ISA`,
`ATEN_CPU_CAPABILITY`, `MKL_ENABLE_INSTRUCTIONS`), so later processes on the same machine skip the ~0.5 s
probe and choose the same kernels. `MGM_CPU_KERNELS=stock` forces F.linear everywhere (the fallback);
`MGM_CPU_PROBE_CACHE=0` probes without reading or writing the file.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mgm.model.linear_kernels import KERNELS

ROW_CLASSES = ("one", "few", "many")
PROBED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MARGIN = 0.9
FEW_ROWS, MANY_ROWS = 4, 128  # rows timed for the "few" and "many" classes
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8", "avx_vnni")
_ISA_VARS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA")


def row_class(rows: int) -> int:
    """Index into ROW_CLASSES for a matmul with `rows` rows."""
    return 0 if rows <= 1 else (1 if rows < 32 else 2)


@functools.cache
def cpu_info() -> dict:
    """{"model", "flags": [...the ISA flags above this CPU has], "torch_capability", "onednn_bf16",
    "onednn_fp16", "limits": {ISA-limiting env vars that are set}}."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass  # not Linux: the model from platform, flags unknown; the probe still decides by measurement
    return {"model": model, "flags": [f for f in _FLAGS if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "onednn_fp16": bool(torch.ops.mkldnn._is_mkldnn_fp16_supported()),
            "limits": {v: os.environ[v] for v in _ISA_VARS if os.environ.get(v)}}


def describe() -> str:
    """One line naming the CPU, its ISA flags and any ISA limit in force (benchmarks print it)."""
    info = cpu_info()
    limits = "".join(f" {k}={v}" for k, v in info["limits"].items())
    return (f"{info['model']} [{' '.join(info['flags']) or 'flags unknown'}; torch {info['torch_capability']}"
            f"{limits}]")


def cache_file() -> Path | None:
    if os.environ.get("MGM_CPU_PROBE_CACHE", "1") == "0":
        return None
    root = os.environ.get("MGM_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mgm"
    return Path(root) / "cpu_kernels.json"


def _cache_key(dtype: torch.dtype) -> str:
    info = cpu_info()
    return json.dumps([info["model"], info["flags"], info["limits"], info["torch_capability"], torch.__version__,
                       torch.get_num_threads(), str(dtype)])


def _read_cache(key: str) -> dict | None:
    path = cache_file()
    try:
        entry = json.loads(path.read_text()).get(key) if path is not None else None
    except (OSError, ValueError, AttributeError):
        return None
    ok = isinstance(entry, dict) and isinstance(entry.get("plan"), dict)
    return entry if ok and set(entry["plan"]) == set(ROW_CLASSES) else None


def _write_cache(key: str, entry: dict) -> None:
    path = cache_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[key] = entry
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(data, f, indent=1)
        os.replace(f.name, path)  # atomic: concurrent processes never read half a file
    except OSError:
        pass  # a read-only home only costs the probe again next time


def _candidates(dtype: torch.dtype) -> tuple[str, ...]:
    """Upcasting is a candidate only where the CPU has no native dot product for the half type: where it
    has one, computing in float32 can only be slower, and a noisy timing must not pick it."""
    native = {torch.bfloat16: "onednn_bf16", torch.float16: "onednn_fp16"}.get(dtype)
    if native is None or cpu_info()[native]:
        return ("stock", "onednn")
    return ("stock", "onednn", "upcast")


def _correct(kernel, dtype: torch.dtype) -> bool:
    """The kernel agrees with a float64 reference (with and without GELU, 1 and 5 rows) without raising."""
    gen = torch.Generator().manual_seed(0)  # its own generator: the global RNG stream is left alone
    w, b = torch.randn(24, 40, generator=gen), torch.randn(24, generator=gen)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    try:
        for rows in (1, 5):
            x = torch.randn(rows, 40, generator=gen)
            for gelu in (False, True):
                ref = F.linear(x.double(), w.double(), b.double())
                ref = F.gelu(ref) if gelu else ref
                y = kernel(x.to(dtype), w.to(dtype), b.to(dtype), gelu)
                if y.shape != ref.shape or not torch.allclose(y.double(), ref, rtol=tol, atol=tol * 4):
                    return False
        return True
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):
        return False


def _time(kernels: dict, x: torch.Tensor, weights: list[torch.Tensor], trials: int) -> dict[str, float]:
    """Min wall time of one matmul per kernel, cycling through `weights` so each call reads its weight from
    memory. Kernels take turns within each trial, so a burst of load from other processes hits them alike."""
    best, calls = dict.fromkeys(kernels, float("inf")), 0
    for i in range(trials + 1):
        for name, kernel in kernels.items():
            w, calls = weights[calls % len(weights)], calls + 1
            start = time.perf_counter()
            kernel(x, w, None, False)
            elapsed = time.perf_counter() - start
            if i:  # the first call builds the primitive / warms up
                best[name] = min(best[name], elapsed)
    return best


def probe(dtype: torch.dtype) -> dict:
    """Measure this CPU: {"plan": {row class: kernel}, "ms": {row class: {kernel: ms}}, "correct": [...]}."""
    correct = [name for name in _candidates(dtype) if _correct(KERNELS[name], dtype)]
    gen = torch.Generator().manual_seed(1)
    # 6 x 2048 x 1024 weights: 48 MB in float32, more than the L2 and most L3 slices of a 2-core share.
    weights = [torch.randn(2048, 1024, generator=gen).to(dtype) for _ in range(6)]
    plan, ms = {}, {}
    with torch.no_grad():
        for name, rows, trials in zip(ROW_CLASSES, (1, FEW_ROWS, MANY_ROWS), (16, 12, 6)):
            x = torch.randn(rows, 1024, generator=gen).to(dtype)
            # two rounds: a kernel replaces F.linear only if it wins clearly in both (load bursts from other
            # processes stall a 2-thread kernel for a whole scheduler slice, ~10 ms, at random)
            rounds = [_time({k: KERNELS[k] for k in correct}, x, weights, trials) for _ in range(2)]
            times = {k: min(r[k] for r in rounds) for k in correct}
            ms[name] = {k: round(v * 1e3, 4) for k, v in times.items()}
            wins = [k for k in correct if k != "stock" and all(r[k] <= MARGIN * r["stock"] for r in rounds)]
            plan[name] = min(wins, key=times.get) if wins else "stock"
    return {"plan": plan, "ms": ms, "correct": correct}


@functools.cache
def probe_result(dtype: torch.dtype) -> dict:
    """`probe(dtype)`, from the disk cache when this CPU was probed before (else probed and stored)."""
    choice = os.environ.get("MGM_CPU_KERNELS", "auto")
    if choice not in ("auto", "stock"):
        raise ValueError(f"MGM_CPU_KERNELS={choice!r}: expected 'auto' (probe this CPU) or 'stock' (F.linear only)")
    if choice == "stock":
        return {"plan": dict.fromkeys(ROW_CLASSES, "stock"), "ms": {}, "correct": ["stock"], "forced": True}
    key = _cache_key(dtype)
    cached = _read_cache(key)
    if cached is not None:
        return cached
    result = probe(dtype)
    _write_cache(key, result)
    return result


def reprobe(dtype: torch.dtype) -> dict:
    """Measure again, store the result in the cache file and use it in this process from now on."""
    result = probe(dtype)
    _write_cache(_cache_key(dtype), result)
    probe_result.cache_clear()
    return result


def linear_plan(dtype: torch.dtype) -> dict[str, str]:
    """{row class: kernel name} chosen for `dtype` on this CPU."""
    return dict(probe_result(dtype)["plan"])

