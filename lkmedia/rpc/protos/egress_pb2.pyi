from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class StartEgressRequest(_message.Message):
    __slots__ = ("egress_id", "egress", "replay", "room_composite", "web", "participant", "track_composite", "track", "room_id", "room_name", "token", "ws_url", "cloud_backup_enabled", "estimated_cpu", "retry_count")
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    ROOM_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    WEB_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    TRACK_COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WS_URL_FIELD_NUMBER: _ClassVar[int]
    CLOUD_BACKUP_ENABLED_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_CPU_FIELD_NUMBER: _ClassVar[int]
    RETRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    egress: bytes
    replay: bytes
    room_composite: bytes
    web: bytes
    participant: bytes
    track_composite: bytes
    track: bytes
    room_id: str
    room_name: str
    token: str
    ws_url: str
    cloud_backup_enabled: bool
    estimated_cpu: float
    retry_count: int
    def __init__(self, egress_id: _Optional[str] = ..., egress: _Optional[bytes] = ..., replay: _Optional[bytes] = ..., room_composite: _Optional[bytes] = ..., web: _Optional[bytes] = ..., participant: _Optional[bytes] = ..., track_composite: _Optional[bytes] = ..., track: _Optional[bytes] = ..., room_id: _Optional[str] = ..., room_name: _Optional[str] = ..., token: _Optional[str] = ..., ws_url: _Optional[str] = ..., cloud_backup_enabled: _Optional[bool] = ..., estimated_cpu: _Optional[float] = ..., retry_count: _Optional[int] = ...) -> None: ...

class ListActiveEgressRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListActiveEgressResponse(_message.Message):
    __slots__ = ("egress_ids",)
    EGRESS_IDS_FIELD_NUMBER: _ClassVar[int]
    egress_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, egress_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class EgressReadyRequest(_message.Message):
    __slots__ = ("egress_id",)
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    def __init__(self, egress_id: _Optional[str] = ...) -> None: ...

class EgressReadyResponse(_message.Message):
    __slots__ = ("start_at", "duration_ms")
    START_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    start_at: int
    duration_ms: int
    def __init__(self, start_at: _Optional[int] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class GetEgressRequest(_message.Message):
    __slots__ = ("egress_id",)
    EGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    egress_id: str
    def __init__(self, egress_id: _Optional[str] = ...) -> None: ...

class UpdateMetricsRequest(_message.Message):
    __slots__ = ("info", "avg_cpu_usage", "max_cpu_usage")
    INFO_FIELD_NUMBER: _ClassVar[int]
    AVG_CPU_USAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_CPU_USAGE_FIELD_NUMBER: _ClassVar[int]
    info: bytes
    avg_cpu_usage: float
    max_cpu_usage: float
    def __init__(self, info: _Optional[bytes] = ..., avg_cpu_usage: _Optional[float] = ..., max_cpu_usage: _Optional[float] = ...) -> None: ...
