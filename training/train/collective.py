"""What the training loop needs to know about its peers: nothing (one process) or a torch process group.

`TrainLoop` trains through a `Collective`. `Solo` is one process (rank 0 of 1; every method is
the identity), so the single-process loop is the distributed loop with N=1. `TorchCollective`
wraps the model for data parallelism (DDP: a full replica per worker; FSDP: parameters,
gradients and optimizer state sharded) and averages losses and metrics over the process group
that Ray Train (or any torch.distributed launcher) set up. Each worker trains on its slice of
every global batch (`shard`), so N workers see exactly the rows of one single-process batch.

    collective = TorchCollective.prepare(model, strategy="ddp", device=device)   # inside each worker
    loop = TrainLoop(cfg, model, train_ex, val_ex, collate, device, collective=collective)
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any


class Solo:
    """One process: rank 0 of 1, the model trains as it is."""

    rank = 0
    world = 1
    sharded = False  # True when each rank holds only part of the weights (FSDP)

    def __init__(self, model: Any = None) -> None:
        self.wrapped = model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: list) -> list:
        """This rank's rows of a global batch: every world-th row from its rank on (never empty:
        a tail batch shorter than the world repeats rows, as DistributedSampler pads)."""
        if self.world == 1:
            return batch
        mine = batch[self.rank::self.world]
        return mine or [batch[self.rank % len(batch)]]

    def forward_model(self, model: Any) -> Any:
        return self.wrapped if self.wrapped is not None else model

    def no_sync(self, last: bool):
        """Skip the gradient all-reduce for all but the last micro-batch of an accumulated step."""
        return nullcontext()

    def mean(self, values: list[float]) -> list[float]:
        return list(values)

    def total(self, values: list[float]) -> list[float]:
        return list(values)

    def clip(self, params: list, max_norm: float) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def full_params(self, writeback: bool = False):
        """A context in which every rank sees the full (unsharded) weights."""
        return nullcontext()


class TorchCollective(Solo):
    """A rank of a torch.distributed process group; `wrapped` is the DDP/FSDP module."""

    def __init__(self, wrapped: Any, strategy: str) -> None:
        import torch.distributed as dist

        super().__init__(wrapped)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.strategy = strategy
        self.sharded = strategy == "fsdp" and self.world > 1

    @classmethod
    def prepare(cls, model: Any, strategy: str, device: Any, move: bool = True) -> TorchCollective:
        """Wrap `model` with Ray Train's `prepare_model` (DDP or FSDP over the worker group)."""
        from ray.train.torch import prepare_model

        # DDP: replicas hold identical buffers (rotary tables), so no broadcast before each forward;
        # FSDP: frozen base and trainable adapters share flat parameters, which needs use_orig_params.
        kwargs = {"broadcast_buffers": False} if strategy == "ddp" else {"use_orig_params": True}
        wrapped = prepare_model(model, move_to_device=device if move else False, parallel_strategy=strategy,
                                parallel_strategy_kwargs=kwargs)
        return cls(wrapped, strategy)

    def no_sync(self, last: bool):
        if last or self.world == 1 or not hasattr(self.wrapped, "no_sync"):
            return nullcontext()
        return self.wrapped.no_sync()

    def _reduce(self, values: list[float], average: bool) -> list[float]:
        import torch
        import torch.distributed as dist

        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor)
        if average:
            tensor /= self.world
        return tensor.tolist()

    def _device(self):
        import torch
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def mean(self, values: list[float]) -> list[float]:
        return self._reduce(values, average=True)

    def total(self, values: list[float]) -> list[float]:
        return self._reduce(values, average=False)

    def clip(self, params: list, max_norm: float) -> None:
        if self.sharded:  # the norm must cover every rank's shard
            self.wrapped.clip_grad_norm_(max_norm)
        else:
            super().clip(params, max_norm)

    def full_params(self, writeback: bool = False):
        if not self.sharded:
            return nullcontext()
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(self.wrapped, writeback=writeback, rank0_only=False)
