"""Inference shared by eval and serving: one engine per loaded model, streamed rows, request batching.

Modules by role:
- `requests`: GenerationParams, Request, RowResult (what goes in, what comes out);
- `sampling`: the greedy threshold, top-k default, pad-id fallback and per-row sampling;
- `engine`: InferenceEngine (`generate`, `generate_ids`, `stream`, `batch_inputs`); `context`: the context check;
- `decoding`: incremental decoding and stop strings (`Row`);
- `rows`: `generate_rows`, many rows with their own parameters in one `model.generate` call;
- `continuous`: `ContinuousBatch`, rows joining and leaving a running batch between steps;
- `tickets` / `batcher`: `Ticket` and `DynamicBatcher`, request batching for the servers;
- `feature_cache` / `prefix_cache` / `cached_prefill`: image features by content and KV by shared prefix,
  reused by `ContinuousBatch` and `stream` once `InferenceEngine.use_caches` is called.

The names below are loaded on first use (PEP 562): importing one light submodule, such as `sampling`
for the servers' request checks, runs this file too, and must not load torch and the model code.
"""
from __future__ import annotations

import importlib
from typing import Any

# exported name -> submodule that defines it
_EXPORTS = {
    "DynamicBatcher": "batcher", "ContinuousBatch": "continuous", "BatchInputs": "engine",
    "InferenceEngine": "engine", "check_context": "engine", "context_limit": "engine",
    "request_token_count": "engine", "GenerationParams": "requests", "Request": "requests",
    "RowResult": "requests", "generate_rows": "rows", "Ticket": "tickets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mgm.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mgm.inference.{module}"), name)
