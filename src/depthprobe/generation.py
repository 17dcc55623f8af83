"""Greedy generation (moved to :mod:`depthprobe.evaluation.generation`); this module re-exports it."""

from depthprobe.evaluation.decode import Decoded, Decoder, HookedDecoder, prefix_cache
from depthprobe.evaluation.generation import (
    Generation,
    PreparedRequests,
    generate_until,
    greedy_generate,
    max_context_length,
    prepare_requests,
)
from depthprobe.evaluation.stops import StopPolicy, first_stop

__all__ = ["Generation", "greedy_generate", "generate_until", "max_context_length"]

_first_stop = first_stop
_prefix_cache = prefix_cache
