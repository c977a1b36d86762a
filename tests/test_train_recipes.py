"""Data-driven defaults (`training.train.recipes`): different data shapes, different settings; explicit values win."""

from __future__ import annotations

from types import SimpleNamespace

from train_support import classification_rows, make_config, train_args, write_jsonl

from training.train.config import TrainConfig
from training.train.recipes import DataShape, data_shape, pick_recipe

AUTO = {"epochs": "auto", "class_weighting": "auto", "optim": {"lr": "auto", "warmup_ratio": "auto"}}


def classify(**extra) -> TrainConfig:
    return TrainConfig(task="classification", batch_size=32, **{**AUTO, **extra})


def test_few_rows_train_more_epochs_than_many():
    few = pick_recipe(classify(), DataShape(rows=300, labels=6)).config
    many = pick_recipe(classify(), DataShape(rows=50_000, labels=6)).config
    assert few.epochs > many.epochs == 4 and few.epochs <= 20


def test_many_labels_train_more_epochs():
    two = pick_recipe(classify(), DataShape(rows=2000, labels=2)).config
    hundred = pick_recipe(classify(), DataShape(rows=2000, labels=150)).config
    assert hundred.epochs > two.epochs


def test_epochs_on_the_recipes_panel_shapes():
    """The panel's measured choices (benchmarks/results/recipes.md): 4 epochs for SQuAD topics' 1 351 training rows
    (8 scored the same in twice the time), 6 for banking77's 77 labels at 2 700 rows, ~20 when 300 rows are all there is."""
    epochs = {shape: pick_recipe(classify(), DataShape(rows=rows, labels=labels)).config.epochs
              for shape, (rows, labels) in {"squad": (1351, 6), "emotion": (2700, 6), "banking77": (2700, 77),
                                            "tiny": (270, 6)}.items()}
    assert epochs == {"squad": 4, "emotion": 4, "banking77": 6, "tiny": 19}


def test_imbalance_turns_class_weights_on():
    even = pick_recipe(classify(), DataShape(rows=6000, labels=6, imbalance=1.2)).config
    skewed = pick_recipe(classify(), DataShape(rows=6000, labels=6, imbalance=10.0)).config
    assert (even.class_weighting, skewed.class_weighting) == ("none", "balanced")


def test_learning_rate_follows_method_and_task():
    lora_cls = pick_recipe(classify(), DataShape(rows=1000, labels=2)).config.optim.lr
    full_cls = pick_recipe(classify(method="full"), DataShape(rows=1000, labels=2)).config.optim.lr
    lora_sft = pick_recipe(TrainConfig(**AUTO), DataShape(rows=1000, mean_tokens=80)).config.optim.lr
    assert full_cls < lora_sft < lora_cls


def test_sft_epochs_follow_tokens_and_warmup_follows_steps():
    short = pick_recipe(TrainConfig(**AUTO), DataShape(rows=500, mean_tokens=40)).config
    long = pick_recipe(TrainConfig(**AUTO), DataShape(rows=20_000, mean_tokens=400)).config
    assert short.epochs > long.epochs == 1
    assert short.optim.warmup_ratio > long.optim.warmup_ratio  # ~30 steps of a short run is a larger share


def test_explicit_values_always_win():
    cfg = classify(epochs=3, class_weighting="none", optim={"lr": 7e-4, "warmup_ratio": 0.2})
    recipe = pick_recipe(cfg, DataShape(rows=100, labels=50, imbalance=30.0))
    got = recipe.config
    assert (got.epochs, got.class_weighting, got.optim.lr, got.optim.warmup_ratio) == (3, "none", 7e-4, 0.2)
    assert not any(line.startswith(("epochs", "optim.lr", "class_weighting")) for line in recipe.advice)


def test_data_shape_reads_rows_labels_imbalance_and_lengths():
    rows = classification_rows(60)
    splits = SimpleNamespace(train=rows, labels=["fruit", "music", "weather"])
    tokenizer = lambda texts, add_special_tokens: {"input_ids": [t.split() for t in texts]}
    shape = data_shape(TrainConfig(task="classification"), splits, tokenizer)
    assert (shape.rows, shape.labels) == (60, 3) and shape.imbalance == 30 / 10  # fruit 30, weather 20, music 10
    assert shape.mean_tokens == 7 and shape.p95_tokens == 7


def test_auto_config_trains_with_resolved_values(tiny_base_dir, tmp_path):
    from training.train.run import train

    data = write_jsonl(tmp_path / "rows.jsonl", classification_rows(48))
    cfg = make_config(*train_args(tiny_base_dir, data, tmp_path / "a", "task=classification", "max_steps=2",
                                  "optim.lr=auto", "class_weighting=auto", "profile.enabled=false"))
    outcome = train(cfg)
    optim = outcome.manifest.hyperparameters["optim"]
    assert optim["lr"] == 2e-3 and outcome.result.steps == 2
    assert outcome.manifest.hyperparameters["class_weighting"] == "balanced"  # 30 / 10 rows: imbalanced


def test_a_picked_recipe_dumps_without_serializer_warnings():
    """model_copy skips validation: a picked value of another type than the field's made pydantic warn on every
    dump (auto mode's trial configs are dumps of the recipe: two warnings at each `tuneserve train auto=true`)."""
    import warnings

    config = pick_recipe(classify(), DataShape(rows=2700, labels=77, imbalance=7.0)).config
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainConfig.model_validate(config.model_dump()) == config
