"""Import path kept for existing code: request batching now lives in `mgm.inference.batcher`."""
from mgm.inference.batcher import EXPECT_TTL, LOGGER_NAME, DynamicBatcher
from mgm.inference.tickets import Ticket

__all__ = ["EXPECT_TTL", "LOGGER_NAME", "DynamicBatcher", "Ticket"]
