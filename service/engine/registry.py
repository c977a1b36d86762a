"""The model registry: the base model, full-model artifacts, and adapters loaded at run time.

    reg = ModelRegistry(ModelSettings(base_model="tiny-llama", artifacts_dir=Path("artifacts")))
    reg.start()                                    # base + discovered artifacts
    lease = reg.acquire("my-adapter")              # loads on demand, marks recently used
    reg.acquire("x", visible=principal.may_use)    # a NotFound's hint lists only the ids `visible` allows
    lease.model_id                                 # the resolved id ("base" -> the base model's id)
    reg.acquire_resident("my-adapter")             # the same without blocking; None when it must load first
    ...; lease.release()
    reg.load_adapter("my-adapter", "/new/version") # hot swap: the new version serves from now on
    reg.unload_adapter("my-adapter")

Adapters are attached to the base as PEFT adapters under internal slot names, so a new
version is attached next to the old one and swapped in one step; the old slot is deleted
when the last running request that uses it finishes. At most `max_adapters` stay loaded;
the least recently used unpinned idle one is evicted. A failed load changes nothing.
Before an adapter or full model serves, its golden set is replayed through the form it is
served in (`service.engine.parity`); one that drifted past `parity` settings is refused.
Plain LoRA adapters of a causal LM are then copied into the batched multi-LoRA stacks and
PEFT's copy is deleted (PEFT keeps one adapter as the anchor of its wrapped layers), so a
load costs the same with 1 or 100 adapters loaded; other methods stay in PEFT.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from training.artifact import load_artifact
from training.artifact.errors import ArtifactInvalid, Conflict, NotFound, Unavailable
from training.artifact.loading import attach_adapter, load_base, load_model_artifact, read_adapter
from training.artifact.remote import is_remote

from service import metrics
from service.engine.catalog import Catalog, discover
from service.engine.device import place, resolve_device
from service.engine.multilora import MultiLora
from service.engine.parity import check_parity, record_parity, served_forward
from service.engine.prepack import prepack_linears
from service.engine.settings import ModelSettings
from service.engine.target import BASE, BASE_ALIAS, AdapterEntry, Target  # noqa: F401 - BASE_ALIAS re-exported

log = logging.getLogger("tuneserve.service.registry")


@dataclass
class Lease:
    """What a request runs on; release() when the request is done."""

    model_id: str
    target: Target
    adapter: AdapterEntry | None
    registry: "ModelRegistry"
    released: bool = False

    @property
    def slot(self) -> str | None:
        return self.adapter.slot if self.adapter else None

    def share(self) -> "Lease":
        """Another lease on the same target and adapter version (each engine call releases its own)."""
        return self.registry._share(self)

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.adapter is not None:
                self.registry._release(self.adapter)


class ModelRegistry:
    def __init__(self, config: ModelSettings) -> None:
        self.config = config
        self.device = resolve_device(config.device)  # a GPU torch cannot see fails here, before any load
        self.model_lock = threading.RLock()  # held around forward passes and PEFT module changes
        self._state = threading.RLock()  # adapters / catalog bookkeeping
        self._load_lock = threading.Lock()  # one adapter load at a time
        self._slots = itertools.count(1)
        self.targets: dict[str, Target] = {}
        self.adapters: OrderedDict[str, AdapterEntry] = OrderedDict()  # LRU order, oldest first
        self.catalog = Catalog()
        self.base_name = ""
        self._orphans: set[str] = set()  # PEFT slots of unloaded adapters kept as the layers' anchor

    # ---- start -------------------------------------------------------------------------
    def start(self, desired: Callable[[Catalog], dict[str, bool]] | None = None) -> None:
        """Load the base, the full models and the adapters (the configured pins first). `desired` (the
        fleet's admin-set state, service/engine/desired.py) edits the discovered catalog and returns its pins."""
        started = time.perf_counter()
        base = load_base(self.config.base_model, dtype=self.config.dtype, task=self.config.base_task)
        self._place(base)
        self.base_name = Path(self.config.base_model).name if "/" in self.config.base_model else self.config.base_model
        metrics.model_loaded(self.base_name, time.perf_counter() - started)
        self.targets[BASE] = Target(BASE, base, base.model)
        self.catalog = discover(self.config.artifacts_dir, base.sha256, self.config.models)
        self.catalog.adapters.update({k: Path(v) for k, v in self.config.adapters.items() if not is_remote(v)})
        pins = dict.fromkeys(self.config.pinned, True) | (desired(self.catalog) if desired else {})
        pinned = [n for n, pin in pins.items() if pin]
        for name, path in self.catalog.models.items():
            try:
                self.targets[name] = self._load_model(name, path)
            except Exception as exc:  # noqa: BLE001 - one bad artifact must not stop the server
                self.catalog.skipped[str(path)] = str(exc)
                log.warning("cannot serve model %s: %s", path, exc)
        order = [n for n in pinned if n in self.catalog.adapters]
        order += [n for n in sorted(self.catalog.adapters) if n not in order]
        for name in order[: self.config.max_adapters]:
            try:
                self.load_adapter(name, pin=name in pinned)
            except Exception as exc:  # noqa: BLE001
                self.catalog.skipped[str(self.catalog.adapters[name])] = str(exc)
                log.warning("cannot load adapter %s: %s", name, exc)

    def _load_model(self, name: str, path: Path) -> Target:
        """A full-model artifact as a target, once its served form passed the parity gate."""
        artifact = load_artifact(path)
        loaded = load_model_artifact(artifact, dtype=self.config.dtype)
        self._place(loaded)
        target = Target(name, loaded, loaded.model)
        target.parity = check_parity(self.config.parity, f"model {name!r}", artifact,
                                     served_forward(target, None, False, self.model_lock))
        record_parity(name, target.parity)
        return target

    def _place(self, loaded: Any) -> None:
        """Move a loaded model to the replica's device; on the CPU, pack its Linear weights (`prepack`)."""
        place(loaded, self.device)
        if self.config.prepack and isinstance(loaded.model, torch.nn.Module):
            packed = prepack_linears(loaded.model)
            log.info("packed %d Linear weights for oneDNN", packed)

    @property
    def base(self) -> Target:
        return self.targets[BASE]

    # ---- lookups -----------------------------------------------------------------------
    def target(self, key: str) -> Target:
        return self.targets[key]

    def acquire_resident(self, model_id: str) -> Lease | None:
        """A lease when `model_id` is resident (the base, a full model, a loaded adapter), else None:
        never blocks on a load, so the event loop may call it."""
        with self._state:
            if model_id in (self.base_name, BASE_ALIAS):
                return Lease(self.base_name, self.base, None, self)
            if model_id in self.targets and model_id != BASE:
                return Lease(model_id, self.targets[model_id], None, self)
            entry = self.adapters.get(model_id)
            if entry is None:
                return None
            self.adapters.move_to_end(model_id)
            entry.in_use += 1
            return Lease(model_id, self.base, entry, self)

    def acquire(self, model_id: str, visible: Callable[[str], bool] | None = None) -> Lease:
        """Resolve a request's `model` to what it runs on; load a known adapter on demand (blocks).
        A NotFound's hint names only models `visible` allows (the caller's key); an artifact that
        fails verification is reported without its paths (the server log has the details)."""
        lease = self.acquire_resident(model_id)
        if lease is not None:
            return lease
        with self._state:
            known = model_id in self.catalog.adapters
        if not known:
            usable = [m for m in self.model_ids() if visible is None or visible(m)]
            raise NotFound(f"model {model_id!r} does not exist",
                           f"GET /v1/models (HTTP) or ListModels (gRPC) lists the models you can use: "
                           f"{', '.join(usable[:8]) or 'none'}; the base model also answers to {BASE_ALIAS!r}")
        self.load_on_demand(model_id)
        return self.acquire(model_id)

    def load_on_demand(self, model_id: str) -> None:
        """Load a catalogued adapter for an inference request; a failed verification is reported
        without its paths (the caller is not an admin; the server log has the details)."""
        try:
            self.load_adapter(model_id)
        except ArtifactInvalid as exc:
            log.warning("cannot load adapter %s on demand: %s", model_id, exc)
            raise type(exc)(f"adapter {model_id!r} cannot be loaded: its artifact failed verification",
                             "retry later or use another model; an operator must fix the artifact "
                             "(the server log names the problem)") from None

    def model_ids(self) -> list[str]:
        with self._state:
            return [self.base_name, *[k for k in self.targets if k != BASE], *self.adapters]

    def list_models(self) -> list[dict[str, Any]]:
        with self._state:
            base = self.base
            rows = [{"id": self.base_name, "kind": "base", "base": "", "task": base.loaded.task, "created": int(base.created)}]
            rows += [{"id": k, "kind": "model", "base": t.loaded.base_id, "task": t.loaded.task, "created": int(t.created)}
                     for k, t in self.targets.items() if k != BASE]
            rows += [{"id": e.name, "kind": "adapter", "base": self.base_name, "task": e.manifest.task,
                      "created": int(e.loaded_at)} for e in self.adapters.values()]
            return rows

    def list_adapters(self) -> list[dict[str, Any]]:
        with self._state:
            return [e.info(self.base_name) for e in self.adapters.values()]

    # ---- adapter lifecycle -------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path | None = None, pin: bool | None = None) -> dict[str, Any]:
        """Load (or replace in place) adapter `name`; on any failure the previous state keeps serving."""
        started = time.perf_counter()
        try:
            info = self._load_adapter(name, path, pin)
        except Exception:
            with self._state:  # only names the registry knows become labels
                known = name in self.catalog.adapters or name in self.adapters
            metrics.adapter_event(name if known else metrics.UNRESOLVED, "load_failed")
            raise
        metrics.adapter_event(name, "loaded", time.perf_counter() - started)
        return info

    def _load_adapter(self, name: str, path: str | Path | None, pin: bool | None) -> dict[str, Any]:
        with self._load_lock:
            source = Path(path) if path is not None else self._find_in_artifacts_dir(name)
            if source is None:
                raise NotFound(f"adapter {name!r} is not in the artifacts directory", "pass its path to load it")
            artifact = load_artifact(source, expect_base_sha256=self.base.loaded.sha256, expect_kind="adapter")
            with self._state:
                old = self.adapters.get(name)
                if old is None:
                    self._eviction_victim()  # refuse early when no slot can be freed
            slot = f"a{next(self._slots)}"
            with self.model_lock:
                self._attach(artifact, slot)
            try:  # the slot is not reachable by requests until the entry is registered below
                # an encoder serving a classifier's adapter for embeddings has no outputs its golden set describes
                same_task = artifact.manifest.task == self.base.loaded.task
                parity = check_parity(self.config.parity, f"adapter {name!r}", artifact,
                                      self._slot_forward(slot)) if same_task else None
            except BaseException:
                self._delete_slot(slot)
                raise
            entry = AdapterEntry(name, slot, artifact.path, artifact.manifest, parity=parity,
                                 pinned=pin if pin is not None else (old.pinned if old else name in self.config.pinned))
            with self._state:
                if old is None:  # evict only once the new adapter is in: a failed load changes nothing
                    try:
                        self._make_room()
                    except Exception:
                        self._delete_slot(entry.slot)
                        raise
                self.adapters[name] = entry
                self.adapters.move_to_end(name)
                self.catalog.adapters[name] = artifact.path
                if old is not None:
                    self._retire(old)
            record_parity(name, parity)
            log.info("adapter %s loaded from %s (slot %s, version %s)", name, artifact.path, slot, artifact.manifest.version)
            return entry.info(self.base_name)

    def _slot_forward(self, slot: str):
        """Rows on `slot` the way requests run them: batched multi-LoRA for generation, PEFT for classification."""
        batched = self.config.batched_lora and self.base.loaded.task == "causal-lm"
        return served_forward(self.base, slot, batched, self.model_lock)

    def _attach(self, artifact, slot: str) -> None:
        """Attach `artifact` under `slot` (model lock held); stack it when the batched path can serve it.
        A failure after PEFT's attach detaches it again: a failed load changes nothing."""
        base = self.base
        generating = base.loaded.task == "causal-lm"
        saved = None
        if self.config.batched_lora and generating and base.multilora is not None:
            saved = read_adapter(artifact)
            if base.multilora.add_saved(slot, *saved):
                return  # plain LoRA on layers already hooked: stacked from its file, PEFT's module walk skipped
        base.model = attach_adapter(base.model, artifact, slot, encoder_only=base.loaded.task == "embedding",
                                    saved=saved)
        if not self.config.batched_lora:
            return
        try:
            base.multilora = base.multilora or MultiLora(base.model)
            if not base.multilora.supports(slot):  # served through PEFT's adapter_names path
                base.multilora.refresh()
                return
            base.multilora.add(slot)
            # generation reads the stacks only (classification keeps PEFT's path and heads)
            if generating and len(base.model.peft_config) > 1:
                base.model.delete_adapter(slot)
        except BaseException:
            self._delete_slot(slot)
            raise

    def unload_adapter(self, name: str, force: bool = False) -> None:
        with self._state:
            entry = self.adapters.get(name)
            if entry is None:
                raise NotFound(f"adapter {name!r} is not loaded", "GET /v1/admin/adapters lists the loaded adapters")
            if entry.pinned and not force:
                raise Conflict(f"adapter {name!r} is pinned", "unpin it first, or unload with force=true")
            del self.adapters[name]
            self.catalog.adapters.pop(name, None)  # unloaded means gone until loaded again explicitly
            self._retire(entry)

    def withdraw(self, name: str) -> None:
        """Unload `name` if loaded (pinned or not) and forget it, so no on-demand load brings it back."""
        with self._state:
            if name in self.adapters:
                self.unload_adapter(name, force=True)
            self.catalog.adapters.pop(name, None)

    def _find_in_artifacts_dir(self, name: str) -> Path | None:
        if name in self.catalog.adapters:
            return self.catalog.adapters[name]
        return discover(self.config.artifacts_dir, self.base.loaded.sha256).adapters.get(name)

    def set_pinned(self, name: str, pinned: bool) -> dict[str, Any]:
        with self._state:
            entry = self.adapters.get(name)
            if entry is None:
                raise NotFound(f"adapter {name!r} is not loaded", "load it first")
            entry.pinned = pinned
            return entry.info(self.base_name)

    def _eviction_victim(self) -> str | None:
        """The adapter `_make_room` would evict (None when a slot is free); raises when none can go."""
        if len(self.adapters) < self.config.max_adapters:
            return None
        for name, entry in self.adapters.items():  # oldest use first
            if not entry.pinned and entry.in_use == 0:
                return name
        if all(e.pinned for e in self.adapters.values()):
            raise Conflict(f"all {self.config.max_adapters} adapter slots hold pinned adapters",
                           "unpin or unload one, or raise max_adapters")
        raise Unavailable(f"all {self.config.max_adapters} adapter slots are busy with running requests",
                          "retry in a moment, or raise max_adapters")

    def _make_room(self) -> None:
        name = self._eviction_victim()
        if name is None:
            return
        log.info("evicting adapter %s (least recently used)", name)
        entry = self.adapters.pop(name)
        self._retire(entry)
        metrics.adapter_event(name, "evicted")

    def _retire(self, entry: AdapterEntry) -> None:
        entry.retired = True
        if entry.in_use == 0:
            self._delete_slot(entry.slot)

    def _share(self, lease: Lease) -> Lease:
        with self._state:
            if lease.adapter is not None:
                lease.adapter.in_use += 1
            return replace(lease, released=False)

    def _release(self, entry: AdapterEntry) -> None:
        with self._state:
            entry.in_use -= 1
            if entry.retired and entry.in_use == 0:
                self._delete_slot(entry.slot)

    def _delete_slot(self, slot: str) -> None:
        with self.model_lock:
            base = self.base
            if base.multilora is not None:
                base.multilora.remove(slot)
            peft = getattr(base.model, "peft_config", {})
            if slot in peft:
                if len(peft) > 1:
                    base.model.delete_adapter(slot)
                else:  # PEFT's last adapter anchors the wrapped layers the stacks hook into: keep it
                    self._orphans.add(slot)
            if peft and set(peft) <= self._orphans and not (base.multilora and base.multilora.slots):
                # Nothing is served through the adapter layers any more. (PEFT would keep a deleted
                # last adapter "active" and fail every later forward): unwrap to the bare base.
                base.model = base.model.unload()
                base.multilora = None
                self._orphans.clear()
