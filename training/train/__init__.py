"""Fine-tuning: one YAML-configured run (`TrainConfig`) with a method chosen from a registry.

    from training.train import TrainConfig, train
    outcome = train(TrainConfig(method="lora", data={"path": "rows.jsonl"}, output="artifacts/a"))

Modules: `config` (typed config), `methods` (full, lora, qlora, dora, prefix, prompt,
p-tuning, ia3, loha, lokr), `data` (prepared dirs or raw files), `templates` (prompt
rendering, response-only labels, collators), `loop` (the training loop), `collective` (one
process or N data-parallel ranks), `checkpoint` (resumable safetensors checkpoints), `output`
(artifacts), `parts` (the pieces of a run), `run` (end to end), `ray_backend` (the same run on
Ray Train workers), `reporting` (progress and tracking), `plan` (memory estimates), `compare`
(several methods on the same data).
"""

from training.train.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def __getattr__(name: str):
    if name == "train":
        from training.train.run import train

        return train
    raise AttributeError(name)
