"""Weight-only int8 / int4 quantisation of the LLM's linears, for decoding with fewer bytes per token.

Decoding one token reads every LLM weight once, so its time is the weight bytes over the memory
bandwidth: int8 weights read 1/4 of float32's bytes, int4 about 1/8. The kernels are PyTorch's own
weight-only matmuls (the ones torchao's CPU layouts dispatch to):
- `int8`: symmetric, one scale per output channel, `torch._weight_int8pack_mm` (CPU, CUDA, MPS);
- `int4`: asymmetric, one scale and zero point per group of `group_size` inputs, packed by
  `torch._convert_weight_to_int4pack_for_cpu` and multiplied by `torch._weight_int4pack_mm_for_cpu` (CPU).
Only the decoder's linears (and, for int8, the LM head) are quantised: the towers, mining, projector and
embeddings stay in the compute dtype, as with bitsandbytes (`NOT_QUANTIZED` in `mgm.model.builder`).
`quantize_llm(model, scheme)` replaces those `nn.Linear`s by `Int8Linear` / `Int4Linear`; the state dict
then holds the quantised tensors (for saving mgm's own copy, not the original's layout).
Shapes: weight [out, in]; x [..., in] -> [..., out].
"""
from __future__ import annotations

import torch
from torch import nn

SCHEMES = ("int8", "int4")
INT4_GROUPS = (128, 64, 32)  # the CPU kernel's group sizes, largest first (fewer scales to read)


def int4_group(in_features: int, out_features: int) -> int | None:
    """The largest supported group size for a [out, in] weight, None when int4 cannot pack it
    (the packing needs out_features divisible by 16)."""
    if out_features % 16:
        return None
    return next((g for g in INT4_GROUPS if in_features % g == 0), None)


class Int8Linear(nn.Module):
    """y = (x @ q^T) * scale + bias with q int8 [out, in] and one scale per output channel."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(weight / scale[:, None]).clamp(-128, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.qweight, self.scale.to(x.dtype))
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


class Int4Linear(nn.Module):
    """Groupwise asymmetric int4: w ≈ (q - 8) * scale + zero per group of `group_size` inputs, q in [0, 15]."""

    def __init__(self, linear: nn.Linear, group_size: int | None = None) -> None:
        super().__init__()
        out_f, in_f = linear.weight.shape
        group_size = group_size or int4_group(in_f, out_f)
        if group_size is None or in_f % group_size or out_f % 16:
            raise ValueError(f"int4 needs in_features divisible by one of {INT4_GROUPS} and out_features by 16 "
                             f"(got {in_f} -> {out_f})")
        w = linear.weight.detach().float().view(out_f, in_f // group_size, group_size)
        lo, hi = w.amin(-1), w.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).view(out_f, in_f)
        zero = lo + 8 * scale  # the kernel computes (q - 8) * scale + zero
        self.in_features, self.out_features, self.group_size = in_f, out_f, group_size
        self.register_buffer("qweight", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        # [in / group, out, 2] (scale, zero), the kernel's layout
        self.register_buffer("scales_and_zeros", torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
                             .to(linear.weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).contiguous(), self.qweight, self.group_size,
                                              self.scales_and_zeros.to(x.dtype))
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int4 groups of {self.group_size}")


def _quantizable(name: str, module: nn.Module, skip: tuple[str, ...]) -> bool:
    return isinstance(module, nn.Linear) and not any(name == s or name.startswith(s + ".") for s in skip)


def quantize_llm(model: nn.Module, scheme: str, skip: tuple[str, ...] = ()) -> int:
    """Replace the LLM's linears of `model` (an MGM causal LM on the CPU) by `scheme`'s modules in place;
    modules whose qualified name starts with an entry of `skip` stay as they are. Returns how many."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    device = next(model.parameters()).device
    if scheme == "int4" and device.type != "cpu":
        raise ValueError(f"int4 weight-only quantization runs on the CPU (the model is on {device}); "
                         f"use --load-4bit (bitsandbytes) on a GPU")
    targets = [(name, module) for name, module in model.named_modules() if _quantizable(name, module, skip)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        # the LM head stays int8 in both schemes (int4 on the head costs the most accuracy for its bytes), and
        # so does a layer whose shape the int4 packing cannot take
        int4 = scheme == "int4" and child != "lm_head" and int4_group(module.in_features, module.out_features)
        make = Int4Linear if int4 else Int8Linear
        try:
            setattr(parent, child, make(module))
        except (RuntimeError, NotImplementedError) as exc:  # a torch build / CPU without the packing kernel
            raise ValueError(f"{scheme} weight-only kernels are not available in this torch build "
                             f"({torch.__version__}): {str(exc).splitlines()[0]}") from None
    return len(targets)


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The float weight [out, in] a quantised module computes with (for error reports and tests)."""
    if isinstance(module, Int8Linear):
        return module.qweight.float() * module.scale.float()[:, None]
    if isinstance(module, Int4Linear):
        eye = torch.eye(module.in_features, dtype=module.scales_and_zeros.dtype)
        return module(eye).float().T - (0 if module.bias is None else module.bias.float()[:, None])
    if isinstance(module, nn.Linear):
        return module.weight.float()
    raise TypeError(f"{type(module).__name__} is not a linear layer")


__all__ = ["SCHEMES", "int4_group", "Int4Linear", "Int8Linear", "dequantized_weight", "quantize_llm"]
