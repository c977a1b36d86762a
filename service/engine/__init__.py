"""The serving engine (plain Python, no Ray): model/adapter registry, continuous-batching
decode thread with mixed adapters and streaming, response cache. See `engine.Engine`."""

from service.engine.engine import Engine
from service.engine.registry import Lease, ModelRegistry, RegistryConfig
from service.engine.types import Event, RequestStream, SamplingParams, TokenLogprob

__all__ = ["Engine", "Event", "Lease", "ModelRegistry", "RegistryConfig", "RequestStream", "SamplingParams",
           "TokenLogprob"]
