from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadAdapterRequest(_message.Message):
    __slots__ = ("name", "path", "pin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    pin: bool
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., pin: _Optional[bool] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("name", "path", "base", "method", "task", "pinned", "loaded_at", "version", "fleet")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    base: str
    method: str
    task: str
    pinned: bool
    loaded_at: int
    version: str
    fleet: FleetStatus
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., base: _Optional[str] = ..., method: _Optional[str] = ..., task: _Optional[str] = ..., pinned: _Optional[bool] = ..., loaded_at: _Optional[int] = ..., version: _Optional[str] = ..., fleet: _Optional[_Union[FleetStatus, _Mapping]] = ...) -> None: ...

class FleetStatus(_message.Message):
    __slots__ = ("generation", "applied", "pending", "failed")
    class FailedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    applied: _containers.RepeatedScalarFieldContainer[str]
    pending: _containers.RepeatedScalarFieldContainer[str]
    failed: _containers.ScalarMap[str, str]
    def __init__(self, generation: _Optional[int] = ..., applied: _Optional[_Iterable[str]] = ..., pending: _Optional[_Iterable[str]] = ..., failed: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UnloadAdapterRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class UnloadAdapterResponse(_message.Message):
    __slots__ = ("name", "unloaded", "fleet")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    name: str
    unloaded: bool
    fleet: FleetStatus
    def __init__(self, name: _Optional[str] = ..., unloaded: _Optional[bool] = ..., fleet: _Optional[_Union[FleetStatus, _Mapping]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("action", "alias", "stable", "candidate", "weight", "shadow", "sticky", "force")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    action: str
    alias: str
    stable: str
    candidate: str
    weight: float
    shadow: float
    sticky: str
    force: bool
    def __init__(self, action: _Optional[str] = ..., alias: _Optional[str] = ..., stable: _Optional[str] = ..., candidate: _Optional[str] = ..., weight: _Optional[float] = ..., shadow: _Optional[float] = ..., sticky: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class VersionNumbers(_message.Message):
    __slots__ = ("version", "requests", "errors", "error_rate", "p50_latency_s", "p95_latency_s", "shadow_requests", "shadow_errors", "agreement", "agreement_n", "quality", "quality_kind", "quality_n")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    P95_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    SHADOW_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ERRORS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_N_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_KIND_FIELD_NUMBER: _ClassVar[int]
    QUALITY_N_FIELD_NUMBER: _ClassVar[int]
    version: str
    requests: int
    errors: int
    error_rate: float
    p50_latency_s: float
    p95_latency_s: float
    shadow_requests: int
    shadow_errors: int
    agreement: float
    agreement_n: int
    quality: float
    quality_kind: str
    quality_n: int
    def __init__(self, version: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., p50_latency_s: _Optional[float] = ..., p95_latency_s: _Optional[float] = ..., shadow_requests: _Optional[int] = ..., shadow_errors: _Optional[int] = ..., agreement: _Optional[float] = ..., agreement_n: _Optional[int] = ..., quality: _Optional[float] = ..., quality_kind: _Optional[str] = ..., quality_n: _Optional[int] = ...) -> None: ...

class GateDecision(_message.Message):
    __slots__ = ("allowed", "forced", "reasons", "stable", "candidate", "thresholds")
    class ThresholdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    forced: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    stable: VersionNumbers
    candidate: VersionNumbers
    thresholds: _containers.ScalarMap[str, float]
    def __init__(self, allowed: _Optional[bool] = ..., forced: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., stable: _Optional[_Union[VersionNumbers, _Mapping]] = ..., candidate: _Optional[_Union[VersionNumbers, _Mapping]] = ..., thresholds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class AliasState(_message.Message):
    __slots__ = ("alias", "stable", "candidate", "weight", "shadow", "sticky", "previous", "generation", "versions", "shadow_dropped")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_DROPPED_FIELD_NUMBER: _ClassVar[int]
    alias: str
    stable: str
    candidate: str
    weight: float
    shadow: float
    sticky: str
    previous: str
    generation: int
    versions: _containers.RepeatedCompositeFieldContainer[VersionNumbers]
    shadow_dropped: int
    def __init__(self, alias: _Optional[str] = ..., stable: _Optional[str] = ..., candidate: _Optional[str] = ..., weight: _Optional[float] = ..., shadow: _Optional[float] = ..., sticky: _Optional[str] = ..., previous: _Optional[str] = ..., generation: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[VersionNumbers, _Mapping]]] = ..., shadow_dropped: _Optional[int] = ...) -> None: ...

class RolloutReply(_message.Message):
    __slots__ = ("aliases", "decision", "fleet")
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[AliasState]
    decision: GateDecision
    fleet: FleetStatus
    def __init__(self, aliases: _Optional[_Iterable[_Union[AliasState, _Mapping]]] = ..., decision: _Optional[_Union[GateDecision, _Mapping]] = ..., fleet: _Optional[_Union[FleetStatus, _Mapping]] = ...) -> None: ...
