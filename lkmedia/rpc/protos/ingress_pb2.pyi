from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartIngressRequest(_message.Message):
    __slots__ = ("info", "token", "ws_url", "logging_fields", "feature_flags")
    class LoggingFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FeatureFlagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WS_URL_FIELD_NUMBER: _ClassVar[int]
    LOGGING_FIELDS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    info: bytes
    token: str
    ws_url: str
    logging_fields: _containers.ScalarMap[str, str]
    feature_flags: _containers.ScalarMap[str, str]
    def __init__(self, info: _Optional[bytes] = ..., token: _Optional[str] = ..., ws_url: _Optional[str] = ..., logging_fields: _Optional[_Mapping[str, str]] = ..., feature_flags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListActiveIngressRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IngressSession(_message.Message):
    __slots__ = ("ingress_id", "resource_id")
    INGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    ingress_id: str
    resource_id: str
    def __init__(self, ingress_id: _Optional[str] = ..., resource_id: _Optional[str] = ...) -> None: ...

class ListActiveIngressResponse(_message.Message):
    __slots__ = ("ingress_ids", "ingress_sessions")
    INGRESS_IDS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ingress_ids: _containers.RepeatedScalarFieldContainer[str]
    ingress_sessions: _containers.RepeatedCompositeFieldContainer[IngressSession]
    def __init__(self, ingress_ids: _Optional[_Iterable[str]] = ..., ingress_sessions: _Optional[_Iterable[_Union[IngressSession, _Mapping]]] = ...) -> None: ...

class DeleteWHIPResourceRequest(_message.Message):
    __slots__ = ("resource_id", "stream_key")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_KEY_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    stream_key: str
    def __init__(self, resource_id: _Optional[str] = ..., stream_key: _Optional[str] = ...) -> None: ...

class ICERestartWHIPResourceRequest(_message.Message):
    __slots__ = ("resource_id", "stream_key", "user_fragment", "password", "candidates", "raw_trickle_ice_sdpfrag", "if_match")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_KEY_FIELD_NUMBER: _ClassVar[int]
    USER_FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RAW_TRICKLE_ICE_SDPFRAG_FIELD_NUMBER: _ClassVar[int]
    IF_MATCH_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    stream_key: str
    user_fragment: str
    password: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    raw_trickle_ice_sdpfrag: str
    if_match: str
    def __init__(self, resource_id: _Optional[str] = ..., stream_key: _Optional[str] = ..., user_fragment: _Optional[str] = ..., password: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ..., raw_trickle_ice_sdpfrag: _Optional[str] = ..., if_match: _Optional[str] = ...) -> None: ...

class ICERestartWHIPResourceResponse(_message.Message):
    __slots__ = ("trickle_ice_sdpfrag", "etag")
    TRICKLE_ICE_SDPFRAG_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    trickle_ice_sdpfrag: str
    etag: str
    def __init__(self, trickle_ice_sdpfrag: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class WHIPRTCConnectionNotifyRequest(_message.Message):
    __slots__ = ("participant_id", "closed", "video", "audio")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    closed: bool
    video: bytes
    audio: bytes
    def __init__(self, participant_id: _Optional[str] = ..., closed: _Optional[bool] = ..., video: _Optional[bytes] = ..., audio: _Optional[bytes] = ...) -> None: ...

class GetIngressInfoRequest(_message.Message):
    __slots__ = ("ingress_id", "stream_key")
    INGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_KEY_FIELD_NUMBER: _ClassVar[int]
    ingress_id: str
    stream_key: str
    def __init__(self, ingress_id: _Optional[str] = ..., stream_key: _Optional[str] = ...) -> None: ...

class GetIngressInfoResponse(_message.Message):
    __slots__ = ("info", "token", "ws_url", "project_id", "logging_fields", "feature_flags")
    class LoggingFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FeatureFlagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INFO_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WS_URL_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    LOGGING_FIELDS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    info: bytes
    token: str
    ws_url: str
    project_id: str
    logging_fields: _containers.ScalarMap[str, str]
    feature_flags: _containers.ScalarMap[str, str]
    def __init__(self, info: _Optional[bytes] = ..., token: _Optional[str] = ..., ws_url: _Optional[str] = ..., project_id: _Optional[str] = ..., logging_fields: _Optional[_Mapping[str, str]] = ..., feature_flags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpdateIngressStateRequest(_message.Message):
    __slots__ = ("ingress_id", "state")
    INGRESS_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ingress_id: str
    state: bytes
    def __init__(self, ingress_id: _Optional[str] = ..., state: _Optional[bytes] = ...) -> None: ...
