"""Import path kept for existing code: the engine now lives in `mgm.inference` (same public names)."""
from mgm.inference.continuous import ContinuousBatch
from mgm.inference.engine import BatchInputs, InferenceEngine, check_context, context_limit, request_token_count
from mgm.inference.requests import GenerationParams, Request, RowResult
from mgm.inference.rows import generate_rows

__all__ = ["BatchInputs", "ContinuousBatch", "GenerationParams", "InferenceEngine", "Request", "RowResult",
           "check_context", "context_limit", "generate_rows", "request_token_count"]
