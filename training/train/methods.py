"""The registry of fine-tuning methods, selected by the one config key `method:`.

Each entry says how to build the PEFT config (or `None` for full fine-tuning), whether the
base loads in 4-bit, whether the result can be merged into the base, and which typed
sub-config of `TrainConfig` holds its options. Adding a method is one `register(Method(...))`.

    method = get_method("lora")
    method.validate(cfg, model_config)          # before any weights are touched
    model = method.wrap(cfg, model)             # PeftModel (or the model itself for `full`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.artifact.errors import ConfigError
from training.train.config import TrainConfig
from training.train.variants import MUTATING_INITS, add_neftune, peft_init, remember_initial_adapter

HEAD_NAMES = ("lm_head", "score", "classifier")
TASK_TYPES = {"causal-lm": "CAUSAL_LM", "classification": "SEQ_CLS"}


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    build: Callable[[TrainConfig, Any], Any] | None  # (cfg, model) -> peft config; None = full fine-tuning
    options: tuple[str, ...] = ()                     # TrainConfig sub-configs holding this method's options
    targets_linear: bool = False                       # targets named linear modules (validated)
    mergeable: bool = False
    quantized_base: bool = False

    def hyperparameters(self, cfg: TrainConfig) -> dict[str, Any]:
        return {name: getattr(cfg, name).model_dump() for name in self.options}

    def validate(self, cfg: TrainConfig, model_config: Any) -> None:
        """Checks that need only the base's config.json (run before loading weights)."""
        if self.quantized_base:
            check_4bit_dims(model_config, cfg.qlora.blocksize)
        lora = cfg.lora
        if "lora" in self.options and self.build not in (_lora, _dora) and (lora.use_rslora or lora.init != "default"):
            raise ConfigError(f"lora.use_rslora and lora.init apply to LoRA adapters, not to {self.name}",
                              "use method lora, dora or qlora, or drop these options")
        if self.quantized_base and lora.init in MUTATING_INITS:
            raise ConfigError(f"lora.init={lora.init} rewrites the base weights, which a 4-bit base cannot hold",
                              "use method lora for pissa/olora, or lora.init=default with qlora")
        if cfg.merge and not self.mergeable:
            mergeable = sorted(n for n, m in METHODS.items() if m.mergeable)
            raise ConfigError(f"method {self.name!r} cannot be merged into the base (merge=true)",
                              f"merge works for {', '.join(mergeable)}; drop merge=true")

    def wrap(self, cfg: TrainConfig, model: Any):
        """Make the model trainable for this method: a PeftModel, or all weights for `full`."""
        if self.build is None:
            for param in model.parameters():
                param.requires_grad_(True)
            return model
        from peft import prepare_model_for_kbit_training

        from training.artifact.loading import peft_model

        if self.targets_linear:
            check_targets(model, cfg.lora.target_modules)
        if self.name == "ia3":
            check_targets(model, cfg.ia3.target_modules)
            check_targets(model, cfg.ia3.feedforward_modules)
        if self.quantized_base:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = peft_model(model, self.build(cfg, model))
        if "lora" in self.options:
            if cfg.lora.init in MUTATING_INITS:
                remember_initial_adapter(model)
            if cfg.lora.neftune_alpha:
                add_neftune(model, cfg.lora.neftune_alpha)
        return model


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown fine-tuning method {name!r}", f"known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of the linear layers PEFT can target (heads excluded), e.g. ['k_proj', 'q_proj', ...]."""
    import torch

    names = set()
    for full_name, module in model.named_modules():
        leaf = full_name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf not in HEAD_NAMES:
            names.add(leaf)
    return sorted(names)


def check_targets(model: Any, targets: list[str] | None) -> None:
    if not targets:
        return
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available and not any(a.endswith(t) for a in available)]
    if missing:
        raise ConfigError(f"target module(s) {missing} do not exist in this model",
                          f"linear modules available: {', '.join(available)}")


def default_targets(model: Any) -> list[str]:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    known = MAPPING.get(getattr(model.config, "model_type", ""), [])
    available = linear_module_names(model)
    chosen = [name for name in known if name in available]
    if not chosen:
        raise ConfigError(f"no default target modules for model type {model.config.model_type!r}",
                          f"set lora.target_modules to some of: {', '.join(available)}")
    return chosen


def check_4bit_dims(model_config: Any, blocksize: int) -> None:
    dims = {name: getattr(model_config, name, None) for name in ("hidden_size", "intermediate_size")}
    bad = {name: dim for name, dim in dims.items() if dim is not None and dim % blocksize}
    if bad:
        raise ConfigError(f"qlora: 4-bit quantization works on blocks of {blocksize} weights, but {bad} "
                          f"is not a multiple of {blocksize}",
                          "use lora on this model, or set qlora.blocksize to a divisor of these sizes (32, 64, 128, ...)")


def head_modules(cfg: TrainConfig, model: Any) -> list[str] | None:
    """Classification heads are new weights: they must train and be saved with the adapter."""
    if cfg.task != "classification":
        return None
    heads = [name for name in ("score", "classifier") if hasattr(model, name)]
    return heads or None


def _common(cfg: TrainConfig, model: Any) -> dict[str, Any]:
    return {"task_type": TASK_TYPES[cfg.task], "modules_to_save": head_modules(cfg, model)}


def _lora(cfg: TrainConfig, model: Any, **extra: Any):
    from peft import LoraConfig

    o = cfg.lora
    return LoraConfig(r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout, use_rslora=o.use_rslora,
                      init_lora_weights=peft_init(o.init),
                      target_modules=o.target_modules or default_targets(model), **_common(cfg, model), **extra)


def _dora(cfg: TrainConfig, model: Any):
    return _lora(cfg, model, use_dora=True)


def _loha(cfg: TrainConfig, model: Any):
    from peft import LoHaConfig

    o = cfg.lora
    return LoHaConfig(r=o.r, alpha=o.alpha, module_dropout=o.dropout,
                      target_modules=o.target_modules or default_targets(model), **_common(cfg, model))


def _lokr(cfg: TrainConfig, model: Any):
    from peft import LoKrConfig

    o = cfg.lora
    return LoKrConfig(r=o.r, alpha=o.alpha, module_dropout=o.dropout,
                      target_modules=o.target_modules or default_targets(model), **_common(cfg, model))


def _ia3(cfg: TrainConfig, model: Any):
    from peft import IA3Config

    o = cfg.ia3
    return IA3Config(target_modules=o.target_modules, feedforward_modules=o.feedforward_modules, **_common(cfg, model))


def _virtual(config_cls: str, **fields: Callable[[TrainConfig], Any]) -> Callable[[TrainConfig, Any], Any]:
    def build(cfg: TrainConfig, model: Any):
        import peft

        extra = {key: get(cfg) for key, get in fields.items()}
        common = _common(cfg, model)
        common.pop("modules_to_save")  # prompt-learning classifiers save their head via the task type
        return getattr(peft, config_cls)(num_virtual_tokens=cfg.prompt.num_virtual_tokens, **common, **extra)

    return build


def _prompt_init(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.prompt.init_text is None:
        return {"prompt_tuning_init": "RANDOM"}
    return {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": cfg.prompt.init_text,
            "tokenizer_name_or_path": cfg.base}


def _prompt(cfg: TrainConfig, model: Any):
    from peft import PromptTuningConfig

    return PromptTuningConfig(num_virtual_tokens=cfg.prompt.num_virtual_tokens, task_type=TASK_TYPES[cfg.task],
                              **_prompt_init(cfg))


register(Method("full", "all weights trainable (full fine-tuning)", None))
register(Method("lora", "low-rank adapters on linear layers", _lora, ("lora",), targets_linear=True, mergeable=True))
register(Method("dora", "weight-decomposed LoRA (magnitude + direction)", _dora, ("lora",), targets_linear=True, mergeable=True))
register(Method("qlora", "LoRA on a 4-bit (bitsandbytes NF4) base", _lora, ("lora", "qlora"), targets_linear=True,
                mergeable=True, quantized_base=True))
register(Method("loha", "low-rank Hadamard product adapters", _loha, ("lora",), targets_linear=True, mergeable=True))
register(Method("lokr", "low-rank Kronecker product adapters", _lokr, ("lora",), targets_linear=True, mergeable=True))
register(Method("ia3", "learned rescaling vectors (IA3)", _ia3, ("ia3",), mergeable=True))
register(Method("prefix", "trainable key/value prefixes in every layer", _virtual("PrefixTuningConfig"), ("prompt",)))
register(Method("prompt", "trainable soft-prompt embeddings", _prompt, ("prompt",)))
register(Method("p-tuning", "soft prompt produced by a small MLP encoder",
                _virtual("PromptEncoderConfig", encoder_hidden_size=lambda cfg: cfg.prompt.encoder_hidden_size), ("prompt",)))
