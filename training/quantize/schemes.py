"""The registry of quantization / export schemes: one name → how to build its artifact files.

A scheme module registers itself with `@register_scheme(Scheme(...))` on its build
function; `get_scheme(name)` imports the scheme modules on first use, so adding a scheme
is adding a module to `SCHEME_MODULES`.

    scheme = get_scheme("onnx-int8-static")
    details = scheme.build(source, config, out_dir, calibration)   # writes files, returns manifest facts
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from training.artifact.errors import ConfigError

SCHEME_MODULES = ("training.quantize.torch_int8", "training.quantize.onnx_export", "training.quantize.bnb",
                  "training.quantize.qat")


@dataclass
class Scheme:
    name: str
    kind: str
    bits: int
    description: str
    needs_calibration: bool = False
    accepts_adapters: bool = False
    max_logit_diff: float | None = 1.0  # None: max abs logit diff reported, not gated
    min_agreement: float = 0.5  # teacher-forced top-1 (causal LM) or label agreement
    max_kl: float | None = None  # mean next-token KL(fp32 || quantized), causal LM
    build: Callable | None = None
    check: Callable | None = None
    tasks: tuple[str, ...] = ("causal-lm", "classification")
    extra: dict = field(default_factory=dict)


_SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Callable:
    def wrap(build: Callable) -> Callable:
        scheme.build = build
        _SCHEMES[scheme.name] = scheme
        return build

    return wrap


def all_schemes() -> dict[str, Scheme]:
    for module in SCHEME_MODULES:
        importlib.import_module(module)
    return dict(_SCHEMES)


def get_scheme(name: str, kinds: tuple[str, ...] | None = None) -> Scheme:
    schemes = all_schemes()
    allowed = {n: s for n, s in schemes.items() if kinds is None or s.kind in kinds}
    if name not in allowed:
        raise ConfigError(f"unknown scheme {name!r}", f"choose one of: {', '.join(sorted(allowed))}")
    return allowed[name]
