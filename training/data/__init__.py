"""Data preparation for fine-tuning: collect, clean, annotate, augment, split, check bias, report.

    from training.data import DataConfig, prepare, load_prepared
    result = prepare(DataConfig(task="classification", sources=[{"path": "train.csv",
                                "columns": {"label": "category"}}]))
    ds = load_prepared(result.path)        # ds.splits["train"], ds.labels, ds.class_weights

CLI: `tuneserve data prepare CONFIG.yaml [key=value ...]`, `tuneserve data annotate export|import`,
`tuneserve data inspect PATH`. Heavy dependencies (datasketch, matplotlib, sklearn) load lazily.
"""

from training.data.config import DataConfig
from training.data.prepared import PreparedDataset, fingerprint_rows, load_prepared


def prepare(cfg: DataConfig, progress=None):
    from training.data.pipeline import prepare as _prepare

    return _prepare(cfg, progress)


__all__ = ["DataConfig", "PreparedDataset", "fingerprint_rows", "load_prepared", "prepare"]
