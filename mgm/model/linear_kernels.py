"""The candidate kernels for a no-grad CPU linear, one signature: (x [..., in], weight [out, in], bias [out] | None,
gelu) -> [..., out]. `mgm.model.cpu_probe` measures them on the running CPU; `mgm.model.fast_linear` runs the
one it chose.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _stock(x, weight, bias, gelu):
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def _onednn(x, weight, bias, gelu):
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, "gelu" if gelu else "none",
                                              [], "none" if gelu else "")


def _upcast(x, weight, bias, gelu):
    # Half-precision inputs computed in float32 (the CPU lacks native bf16/fp16 dot products); the upcast
    # copy of the weight costs one read, much less than a software-emulated half-precision GEMM.
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return (F.gelu(y) if gelu else y).to(x.dtype)


KERNELS = {"stock": _stock, "onednn": _onednn, "upcast": _upcast}
