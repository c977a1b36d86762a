"""`DataConfig`: one typed config for `tuneserve data prepare` (sources, cleaning, split, bias...).

Load it like every other config (defaults < YAML < `TUNESERVE_DATA__*` env < `key=value`):

    cfg = load_config(DataConfig, "training/configs/data_banking77.yaml", ["split.seed=7"],
                      env_prefix="TUNESERVE_DATA__")

`sources[].columns` maps each task field to a source column (`{label: category}` reads the
label from the `category` column; dotted names reach into nested objects, `answers.text`).
Relative paths are resolved against the current working directory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from training.artifact.config import StrictModel

TaskName = Literal["instruction", "classification", "qa", "text", "preference", "kto"]
SourceFormat = Literal["json", "jsonl", "csv", "tsv", "parquet", "text", "hf_disk"]
SPLIT_NAMES = ("train", "validation", "test")
ENV_PREFIX = "TUNESERVE_DATA__"


class SourceConfig(StrictModel):
    path: str
    format: SourceFormat | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    text_mode: Literal["line", "paragraph", "document"] = "line"
    hf_split: str | None = None
    label_names: list[str] | None = None


class UnicodeRule(StrictModel):
    enabled: bool = True
    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFKC"


class WhitespaceRule(StrictModel):
    enabled: bool = True
    collapse_spaces: bool = True


class HtmlRule(StrictModel):
    enabled: bool = True
    protect_code: bool = True


class PiiRule(StrictModel):
    enabled: bool = False
    kinds: list[Literal["email", "card", "ip", "phone"]] = Field(default_factory=lambda: ["email", "card", "ip", "phone"])


class LengthRule(StrictModel):
    enabled: bool = True
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    tokenizer: str | None = None


class LanguageRule(StrictModel):
    enabled: bool = False
    allowed: list[str] = Field(default_factory=lambda: ["en"])
    min_chars: int = Field(20, ge=0)


class ExactDedupRule(StrictModel):
    enabled: bool = True


class NearDedupRule(StrictModel):
    enabled: bool = True
    threshold: float = Field(0.85, gt=0.0, le=1.0)
    num_perm: int = Field(64, ge=16)
    shingle: int = Field(5, ge=1)


class CleaningConfig(StrictModel):
    """One entry per registered rule; rules run in registry order (see `rules.CLEANING_RULES`)."""

    unicode: UnicodeRule = Field(default_factory=UnicodeRule)
    whitespace: WhitespaceRule = Field(default_factory=WhitespaceRule)
    html: HtmlRule = Field(default_factory=HtmlRule)
    pii: PiiRule = Field(default_factory=PiiRule)
    length: LengthRule = Field(default_factory=LengthRule)
    language: LanguageRule = Field(default_factory=LanguageRule)
    exact_dedup: ExactDedupRule = Field(default_factory=ExactDedupRule)
    near_dedup: NearDedupRule = Field(default_factory=NearDedupRule)


class BackendConfig(StrictModel):
    """Where paraphrases and back-translations come from: offline rules or an OpenAI-compatible API."""

    kind: Literal["offline", "openai"] = "offline"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key_env: str = "TUNESERVE_API_KEY"
    timeout_s: float = Field(30.0, gt=0)
    pivot_language: str = "de"


class AugmentConfig(StrictModel):
    enabled: bool = False
    ops: list[Literal["synonym", "swap", "delete", "insert", "char_noise", "paraphrase", "back_translation"]] = Field(
        default_factory=lambda: ["synonym", "swap", "delete", "insert"])
    alpha: float = Field(0.1, gt=0.0, le=0.5)
    copies: int = Field(1, ge=1, le=16)
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    fields: list[str] | None = None
    synonyms_file: str | None = None
    seed: int = 13
    backend: BackendConfig = Field(default_factory=BackendConfig)


class SplitConfig(StrictModel):
    ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "validation": 0.15, "test": 0.15})
    stratify: bool | None = None
    group_by: str | None = None
    seed: int = 42
    leakage: Literal["fail", "fix", "off"] = "fix"
    near_dup_threshold: float = Field(0.85, gt=0.0, le=1.0)

    @field_validator("ratios")
    @classmethod
    def _check_ratios(cls, ratios: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(ratios) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"unknown split names {unknown}; use {list(SPLIT_NAMES)}")
        if "train" not in ratios:
            raise ValueError("ratios must include train")
        if any(r < 0 for r in ratios.values()) or abs(sum(ratios.values()) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be >= 0 and sum to 1, got sum {sum(ratios.values()):.4f}")
        return {name: float(ratios.get(name, 0.0)) for name in SPLIT_NAMES}


class BiasConfig(StrictModel):
    slices: list[str] = Field(default_factory=list)
    keywords: dict[str, list[str]] = Field(default_factory=dict)
    mitigation: Literal["none", "oversample", "undersample", "class_weights"] = "none"


class AnnotationConfig(StrictModel):
    """Label files (Label Studio export JSON, CSV, JSONL) merged into rows by `row_id` or text."""

    files: list[str] = Field(default_factory=list)
    on_conflict: Literal["drop", "first"] = "drop"


class OutputConfig(StrictModel):
    dir: str = "data/prepared/dataset"
    overwrite: bool = False
    plots: bool = True


class DataConfig(StrictModel):
    name: str = "dataset"
    task: TaskName
    sources: list[SourceConfig] = Field(min_length=1)
    on_error: Literal["skip", "fail"] = "skip"
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    augmentation: AugmentConfig = Field(default_factory=AugmentConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    bias: BiasConfig = Field(default_factory=BiasConfig)
    annotations: AnnotationConfig = Field(default_factory=AnnotationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _check_task_options(self) -> DataConfig:
        if self.bias.mitigation != "none" and self.task != "classification":
            raise ValueError(f"bias.mitigation={self.bias.mitigation} needs task=classification")
        if self.split.stratify and self.task != "classification":
            raise ValueError("split.stratify needs task=classification")
        return self

    @property
    def stratify(self) -> bool:
        return self.task == "classification" if self.split.stratify is None else self.split.stratify

    def extra_columns(self) -> list[str]:
        """Source columns kept beside the task fields (group key, slice columns)."""
        cols = list(self.bias.slices)
        if self.split.group_by:
            cols.append(self.split.group_by)
        return list(dict.fromkeys(cols))
