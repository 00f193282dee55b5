"""Linear layers through the kernel the running CPU does best, when no gradient is needed.

torch's CPU `F.linear` calls MKL (or oneDNN's matmul for half types). `torch.ops.mkldnn._linear_pointwise`
(the kernel torch.compile's CPU backend emits) computes the same function, rounding aside, and fuses GELU
into the matmul. Which one is faster depends on the CPU, the dtype and the number of rows: on an AVX-512
AMD EPYC oneDNN streamed float32 decode weights at ~34 GB/s against MKL's ~20; on an AVX2-only CPU the two
tie, and oneDNN has no bf16/fp16 inner product at all there (creating the primitive raises). bf16 matmuls
without AVX512-BF16 are several times slower than computing in float32 from an upcast copy.

So the choice is measured, not assumed: `kernel_plan(dtype)` probes once per process and dtype (cached on
disk per CPU, torch version and ISA limits, see `mgm.model.cpu_probe`) which candidate is correct and
fastest for each row class (one row = decoding, few rows, many rows = prefill and towers), with
`F.linear` the fallback wherever a candidate fails or is not clearly faster. The mining, CLIP and ConvNeXt
code calls `linear` directly; a model's plain `nn.Linear` layers use it only when the loader (or the
owner of the model) turns them into `FastLinear` with `use_fast_linears`. `with stock_linears():` makes
every `linear` plain F.linear for the code inside (benchmarks use it to measure what the kernels buy).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch
from torch import nn

from mgm.model import cpu_probe
from mgm.model.linear_kernels import KERNELS

# Scoped, not global: a `stock_linears()` block affects only its own thread / task.
_STOCK = contextvars.ContextVar("mgm_stock_linears", default=False)


@contextlib.contextmanager
def stock_linears() -> Iterator[None]:
    """Inside this block every `linear` is plain F.linear: the reference the benchmarks compare to."""
    token = _STOCK.set(True)
    try:
        yield
    finally:
        _STOCK.reset(token)


def kernel_plan(dtype: torch.dtype) -> dict[str, str]:
    """{row class: kernel name} for `dtype` on this CPU (probed once per process, see cpu_probe)."""
    return cpu_probe.linear_plan(dtype)


@functools.cache
def _plan_functions(dtype: torch.dtype) -> tuple:
    plan = kernel_plan(dtype)
    return tuple(KERNELS[plan[name]] for name in cpu_probe.ROW_CLASSES)


def _kernel(x: torch.Tensor, weight: torch.Tensor):
    if (_STOCK.get() or x.device.type != "cpu" or weight.device.type != "cpu" or weight.dtype != x.dtype
            or x.dtype not in cpu_probe.PROBED_DTYPES or x.dim() < 2):
        return KERNELS["stock"]
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return KERNELS["stock"]  # the fast kernels have no autograd formula
    rows = x.numel() // max(x.shape[-1], 1)
    return _plan_functions(x.dtype)[cpu_probe.row_class(rows)]


def linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """layer(x), followed by exact GELU when `gelu` (fused into the matmul on the oneDNN path)."""
    return linear_weight(x, layer.weight, layer.bias, gelu)


def linear_weight(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  gelu: bool = False) -> torch.Tensor:
    """F.linear(x, weight [out, in], bias), then exact GELU when `gelu`."""
    return _kernel(x, weight)(x, weight, bias, gelu)


class FastLinear(nn.Linear):
    """An `nn.Linear` whose no-grad CPU forward takes the kernel `kernel_plan` chose for this CPU.

    Same parameters, state-dict keys and autograd behaviour as `nn.Linear`; only the kernel differs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_weight(x, self.weight, self.bias)


def use_fast_linears(model: nn.Module) -> int:
    """Turn every plain `nn.Linear` of `model` (a model you own, e.g. freshly loaded) into `FastLinear`;
    subclasses such as quantised or LoRA layers keep their own class. Returns how many were switched.

    `load_pretrained_model(..., fast_linears=True)` (the default on CPU) calls this on the model it builds.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FastLinear
            count += 1
    return count


def use_stock_linears(model: nn.Module) -> int:
    """Undo `use_fast_linears`: every `FastLinear` of `model` becomes a plain `nn.Linear` again."""
    count = 0
    for module in model.modules():
        if type(module) is FastLinear:
            module.__class__ = nn.Linear
            count += 1
    return count
