from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeployRequest(_message.Message):
    __slots__ = ("name", "source", "filename")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    filename: str
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("name", "version", "offloads", "deployed_at", "size", "filename")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFLOADS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    offloads: _containers.RepeatedScalarFieldContainer[str]
    deployed_at: float
    size: int
    filename: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., offloads: _Optional[_Iterable[str]] = ..., deployed_at: _Optional[float] = ..., size: _Optional[int] = ..., filename: _Optional[str] = ...) -> None: ...

class DeployReply(_message.Message):
    __slots__ = ("deployment", "unchanged")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    unchanged: bool
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ..., unchanged: _Optional[bool] = ...) -> None: ...

class UndeployRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UndeployReply(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class ListOffloadsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOffloadsReply(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("offload", "args_json", "payload", "has_payload", "timeout_s")
    OFFLOAD_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HAS_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    offload: str
    args_json: str
    payload: bytes
    has_payload: bool
    timeout_s: float
    def __init__(self, offload: _Optional[str] = ..., args_json: _Optional[str] = ..., payload: _Optional[bytes] = ..., has_payload: _Optional[bool] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class InvokeReply(_message.Message):
    __slots__ = ("result_json", "result_bytes", "is_bytes", "engine", "wall_s", "modeled_s")
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    IS_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    MODELED_S_FIELD_NUMBER: _ClassVar[int]
    result_json: str
    result_bytes: bytes
    is_bytes: bool
    engine: str
    wall_s: float
    modeled_s: float
    def __init__(self, result_json: _Optional[str] = ..., result_bytes: _Optional[bytes] = ..., is_bytes: _Optional[bool] = ..., engine: _Optional[str] = ..., wall_s: _Optional[float] = ..., modeled_s: _Optional[float] = ...) -> None: ...

class DevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EngineInfo(_message.Message):
    __slots__ = ("name", "kind", "lanes", "ops")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LANES_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    lanes: int
    ops: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., lanes: _Optional[int] = ..., ops: _Optional[_Iterable[str]] = ...) -> None: ...

class DevicesReply(_message.Message):
    __slots__ = ("device", "description", "engines", "memory_bytes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    device: str
    description: str
    engines: _containers.RepeatedCompositeFieldContainer[EngineInfo]
    memory_bytes: int
    def __init__(self, device: _Optional[str] = ..., description: _Optional[str] = ..., engines: _Optional[_Iterable[_Union[EngineInfo, _Mapping]]] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EngineStats(_message.Message):
    __slots__ = ("engine", "kind", "lanes", "tasks", "errors", "bytes_in", "bytes_out", "utilization", "queue_depth", "queue_capacity", "wall_busy_s", "modeled_busy_s")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LANES_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    WALL_BUSY_S_FIELD_NUMBER: _ClassVar[int]
    MODELED_BUSY_S_FIELD_NUMBER: _ClassVar[int]
    engine: str
    kind: str
    lanes: int
    tasks: int
    errors: int
    bytes_in: int
    bytes_out: int
    utilization: float
    queue_depth: int
    queue_capacity: int
    wall_busy_s: float
    modeled_busy_s: float
    def __init__(self, engine: _Optional[str] = ..., kind: _Optional[str] = ..., lanes: _Optional[int] = ..., tasks: _Optional[int] = ..., errors: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., utilization: _Optional[float] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., wall_busy_s: _Optional[float] = ..., modeled_busy_s: _Optional[float] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("device", "uptime_s", "modeled_s", "tasks", "errors", "pcie_bytes", "engines", "host_cores_saved", "invocations", "invocation_failures", "in_flight", "hung", "deployments", "isolation", "worker_processes", "worker_restarts")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    MODELED_S_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    PCIE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    HOST_CORES_SAVED_FIELD_NUMBER: _ClassVar[int]
    INVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_FAILURES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    HUNG_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    WORKER_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    device: str
    uptime_s: float
    modeled_s: float
    tasks: int
    errors: int
    pcie_bytes: int
    engines: _containers.RepeatedCompositeFieldContainer[EngineStats]
    host_cores_saved: float
    invocations: int
    invocation_failures: int
    in_flight: int
    hung: int
    deployments: int
    isolation: str
    worker_processes: int
    worker_restarts: int
    def __init__(self, device: _Optional[str] = ..., uptime_s: _Optional[float] = ..., modeled_s: _Optional[float] = ..., tasks: _Optional[int] = ..., errors: _Optional[int] = ..., pcie_bytes: _Optional[int] = ..., engines: _Optional[_Iterable[_Union[EngineStats, _Mapping]]] = ..., host_cores_saved: _Optional[float] = ..., invocations: _Optional[int] = ..., invocation_failures: _Optional[int] = ..., in_flight: _Optional[int] = ..., hung: _Optional[int] = ..., deployments: _Optional[int] = ..., isolation: _Optional[str] = ..., worker_processes: _Optional[int] = ..., worker_restarts: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("status", "version", "device", "uptime_s", "deployments", "flight_port", "pid")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    FLIGHT_PORT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    status: str
    version: str
    device: str
    uptime_s: float
    deployments: int
    flight_port: int
    pid: int
    def __init__(self, status: _Optional[str] = ..., version: _Optional[str] = ..., device: _Optional[str] = ..., uptime_s: _Optional[float] = ..., deployments: _Optional[int] = ..., flight_port: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class ShutdownRequest(_message.Message):
    __slots__ = ("grace_s",)
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    grace_s: float
    def __init__(self, grace_s: _Optional[float] = ...) -> None: ...

class ShutdownReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
