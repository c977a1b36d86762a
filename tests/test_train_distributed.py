"""Data-parallel pieces without Ray: batch shards, loss shares, the distributed config and the CLI flags."""

from __future__ import annotations

import pytest
from train_support import make_config

from training.train.collective import Solo


class Rank(Solo):
    """A rank of a pretend world: only what sharding needs."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.rank, self.world = rank, world


def _loop(cfg, examples, collective):
    import torch

    from training.train.loop import TrainLoop

    return TrainLoop(cfg, torch.nn.Linear(2, 2), examples, [], collate=lambda b: b, device=torch.device("cpu"),
                     collective=collective)


def _examples(n: int) -> list[dict]:
    return [{"input_ids": list(range(3 + i % 5)), "labels": [-100, -100] + list(range(1 + i % 5)), "i": i}
            for i in range(n)]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_every_global_batch_without_overlap(world):
    cfg = make_config("batch_size=8", f"distributed.workers={world}", "distributed.backend=ray")
    examples = _examples(40)
    loops = [_loop(cfg, examples, Rank(r, world)) for r in range(world)]
    for index in range(12):  # crosses an epoch boundary (5 batches per epoch)
        whole = [e["i"] for e in loops[0].global_batch(index)]
        shards = [[e["i"] for e in loop.micro_batch(index)] for loop in loops]
        assert sorted(sum(shards, [])) == sorted(whole) and len(set(sum(shards, []))) == len(whole)
        assert all(len(s) == 8 // world for s in shards)


def test_the_global_batch_is_the_single_process_batch():
    examples = _examples(40)
    solo = _loop(make_config("batch_size=8"), examples, None)
    ranked = _loop(make_config("batch_size=8", "distributed.workers=2", "distributed.backend=ray"), examples, Rank(1, 2))
    assert [e["i"] for e in solo.micro_batch(7)] == [e["i"] for e in ranked.global_batch(7)]


def test_a_short_tail_batch_still_gives_every_rank_rows():
    assert Rank(3, 4).shard([{"i": 0}, {"i": 1}]) == [{"i": 1}]
    assert Rank(1, 4).shard([{"i": 0}, {"i": 1}]) == [{"i": 1}]


def test_loss_shares_make_the_ranks_average_the_global_token_mean():
    world = 2
    cfg = make_config("batch_size=8", "distributed.workers=2", "distributed.backend=ray")
    examples = _examples(16)
    loops = [_loop(cfg, examples, Rank(r, world)) for r in range(world)]
    whole = loops[0].global_batch(0)
    shares = [loop._share(loop.micro_batch(0), whole) for loop in loops]
    assert shares[0] != shares[1], "the ranks hold different token counts in this batch"
    assert sum(shares) / world == pytest.approx(1.0)
    assert _loop(make_config("batch_size=8"), examples, None)._share(whole, whole) == 1.0


@pytest.mark.parametrize("args, message", [
    (["batch_size=6", "distributed.backend=ray", "distributed.workers=4"], "multiple of distributed.workers"),
    (["distributed.workers=2"], "need distributed.backend=ray"),
    (["distributed.backend=ray", "distributed.strategy=fsdp"], "use_gpu=true"),
])
def test_distributed_config_errors_say_what_to_change(args, message):
    from training.artifact.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match=message):
        make_config(*args)


def test_cli_flags_become_distributed_overrides():
    from tuneserve.commands.train import distributed_overrides

    assert distributed_overrides("ray", 2, True, "ray://head:10001") == [
        "distributed.backend=ray", "distributed.workers=2", "distributed.use_gpu=true", "distributed.address=ray://head:10001"]
    assert distributed_overrides(None, None, False, None) == []
    cfg = make_config(*distributed_overrides("ray", 2, False, "auto"))
    assert (cfg.distributed.backend, cfg.distributed.workers, cfg.distributed.address) == ("ray", 2, "auto")


def test_a_search_trial_on_ray_train_reserves_no_cpu_of_its_own(tmp_path):
    from search_support import make_search_config

    args = ["space.optim.lr={type: loguniform, low: 1.0e-4, high: 1.0e-2}", f"output={tmp_path}"]
    assert make_search_config(*args).trial_resources() == {"cpu": 1.0}
    ray_train = make_search_config(*args, "train.distributed.backend=ray", "train.distributed.workers=2")
    assert ray_train.trial_resources()["cpu"] == 0
