"""Linear layers through oneDNN on CPU when no gradient is needed (towers, mining, LLM decode).

torch's CPU `F.linear` calls MKL's sgemm, which on the AMD EPYC machines this project runs on is
1.4-2.5× slower than oneDNN's matmul for every shape MGM uses (ConvNeXt MLPs, CLIP layers, the LLM's
layers and head at one token per step; measured with benchmarks/bench_inference.py). `torch.ops.mkldnn.
_linear_pointwise` (the kernel torch.compile's CPU backend emits) computes the same function, float
rounding aside, and fuses GELU into the matmul. It has no autograd formula, so `linear` falls back to
F.linear whenever a gradient may be needed, off CPU, or for dtypes other than float32/bfloat16.
`with stock_linears():` turns it off for the code inside (benchmarks use it to measure what it buys).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_DTYPES = (torch.float32, torch.bfloat16)
MIN_ROWS = {torch.float32: 1, torch.bfloat16: 32}  # below this many rows F.linear is used (see _eligible)
# Scoped, not global: a `stock_linears()` block affects only its own thread / task.
_STOCK = contextvars.ContextVar("mgm_stock_linears", default=False)


@contextlib.contextmanager
def stock_linears() -> Iterator[None]:
    """Inside this block every `linear` is plain F.linear (MKL): the reference the benchmarks compare to."""
    token = _STOCK.set(True)
    try:
        yield
    finally:
        _STOCK.reset(token)


@functools.cache
def _works() -> bool:
    """Whether this torch build has the kernel and it agrees with F.linear (checked once per process)."""
    try:
        gen = torch.Generator().manual_seed(0)  # its own generator: the global RNG stream is left alone
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 8), (4, 8), (4,)))
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
        return bool(torch.allclose(y, F.gelu(F.linear(x, w, b)), atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if _STOCK.get() or x.device.type != "cpu" or x.dtype not in _DTYPES or weight.dtype != x.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    # float32 at one row (decoding one token per sequence) is where oneDNN gains most: it streams the
    # weight at ~34 GB/s on 2 cores where MKL's gemv reaches ~20 (0.4-0.7x the time for every LLM
    # shape from 1024 to 4096 wide and the 32k-256k heads; decode 19.9 -> 13.2 ms/token in the benchmark).
    # bfloat16 below 32 rows is a tie with F.linear, so those keep the stock path.
    rows = x.numel() // max(x.shape[-1], 1)
    return weight.device.type == "cpu" and x.dim() >= 2 and rows >= MIN_ROWS[x.dtype] and _works()


def linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """layer(x), followed by exact GELU when `gelu` (fused into the matmul on the oneDNN path)."""
    return linear_weight(x, layer.weight, layer.bias, gelu)


def linear_weight(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  gelu: bool = False) -> torch.Tensor:
    """F.linear(x, weight [out, in], bias), then exact GELU when `gelu`."""
    if _eligible(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, "gelu" if gelu else "none",
                                                  [], "none" if gelu else "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self)


def use_onednn_linears(model: nn.Module) -> int:
    """Route every plain `nn.Linear` of `model` through `linear` (subclasses such as quantised or
    LoRA layers keep their own forward). Returns how many layers were switched."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and "forward" not in module.__dict__:
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
