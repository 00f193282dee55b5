"""Seeded random weights of the tiny zoo: one generator per (seed, component), and a fill rule that makes
every parameter matter (norm scales and layer scales away from 1, biases away from 0)."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def seeded_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, component name), so components do not depend on build order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def randomize_(target: torch.nn.Module | dict[str, torch.Tensor], gen: torch.Generator) -> None:
    """Fill every floating tensor in place with non-trivial random values, in name order.

    Rules (so tests are sensitive to every parameter, norms and layer scales included):
    - 1-D `*weight` (LayerNorm / RMSNorm / LayerNorm2d scales): 1 + 0.2·N(0,1);
    - `*gamma` (ConvNeXt layer scale): 0.5 + 0.2·N(0,1);
    - 1-D `*bias`: 0.1·N(0,1); other 1-D (e.g. CLIP `class_embedding`): 0.5·N(0,1); scalars: 0.1·N(0,1);
    - ≥2-D: N(0,1)/sqrt(fan_in), fan_in = in·kh·kw for 4-D convs, else the last dimension.

    Args:
        target: a module (its parameters, tied ones once) or a dict of tensors.
        gen: the generator.
    """
    if isinstance(target, torch.nn.Module):
        items: Iterable[tuple[str, torch.Tensor]] = target.named_parameters()
    else:
        items = target.items()
    with torch.no_grad():
        for name, tensor in sorted(items, key=lambda kv: kv[0]):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
            if name.endswith("gamma"):
                value = 0.5 + 0.2 * noise
            elif tensor.dim() == 0:
                value = 0.1 * noise
            elif tensor.dim() == 1:
                if name.endswith("weight"):
                    value = 1.0 + 0.2 * noise
                elif name.endswith("bias"):
                    value = 0.1 * noise
                else:
                    value = 0.5 * noise
            else:
                fan_in = tensor[0].numel() if tensor.dim() == 4 else tensor.shape[-1]
                value = noise / fan_in**0.5
            tensor.copy_(value.to(tensor.dtype))


def perturbed(state: dict[str, torch.Tensor], gen: torch.Generator, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Copy of `state` with every floating tensor shifted by scale·N(0,1) (integer tensors copied)."""
    out: dict[str, torch.Tensor] = {}
    for name in sorted(state):
        t = state[name]
        if t.is_floating_point():
            out[name] = t + scale * torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype)
        else:
            out[name] = t.clone()
    return {k: out[k] for k in state}
