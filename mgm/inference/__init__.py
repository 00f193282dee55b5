"""Inference shared by eval and serving: one engine per loaded model, streamed rows, request batching.

Modules by role:
- `requests`: GenerationParams, Request, RowResult (what goes in, what comes out);
- `sampling`: the greedy threshold, top-k default, pad-id fallback and per-row sampling;
- `engine`: InferenceEngine (`generate`, `generate_ids`, `stream`, `batch_inputs`), the context check;
- `decoding`: incremental decoding and stop strings (`Row`);
- `rows`: `generate_rows`, many rows with their own parameters in one `model.generate` call;
- `continuous`: `ContinuousBatch`, rows joining and leaving a running batch between steps;
- `tickets` / `batcher`: `Ticket` and `DynamicBatcher`, request batching for the servers;
- `feature_cache` / `prefix_cache` / `cached_prefill`: image features by content and KV by shared prefix,
  reused by `ContinuousBatch` and `stream` once `InferenceEngine.use_caches` is called.
"""
from mgm.inference.batcher import DynamicBatcher
from mgm.inference.continuous import ContinuousBatch
from mgm.inference.engine import BatchInputs, InferenceEngine, check_context, context_limit, request_token_count
from mgm.inference.requests import GenerationParams, Request, RowResult
from mgm.inference.rows import generate_rows
from mgm.inference.tickets import Ticket

__all__ = [
    "BatchInputs", "ContinuousBatch", "DynamicBatcher", "GenerationParams", "InferenceEngine", "Request",
    "RowResult", "Ticket", "check_context", "context_limit", "generate_rows", "request_token_count",
]
