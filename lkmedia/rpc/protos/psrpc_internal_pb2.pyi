from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Msg(_message.Message):
    __slots__ = ("type_url", "value", "channel")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    value: bytes
    channel: str
    def __init__(self, type_url: _Optional[str] = ..., value: _Optional[bytes] = ..., channel: _Optional[str] = ...) -> None: ...

class Channel(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("request_id", "client_id", "sent_at", "expiry", "multi", "request", "metadata", "raw_request")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FIELD_NUMBER: _ClassVar[int]
    MULTI_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RAW_REQUEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    client_id: str
    sent_at: int
    expiry: int
    multi: bool
    request: _any_pb2.Any
    metadata: _containers.ScalarMap[str, str]
    raw_request: bytes
    def __init__(self, request_id: _Optional[str] = ..., client_id: _Optional[str] = ..., sent_at: _Optional[int] = ..., expiry: _Optional[int] = ..., multi: _Optional[bool] = ..., request: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., raw_request: _Optional[bytes] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("request_id", "server_id", "sent_at", "response", "error", "code", "raw_response", "error_details")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RAW_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAILS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    server_id: str
    sent_at: int
    response: _any_pb2.Any
    error: str
    code: str
    raw_response: bytes
    error_details: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    def __init__(self, request_id: _Optional[str] = ..., server_id: _Optional[str] = ..., sent_at: _Optional[int] = ..., response: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., error: _Optional[str] = ..., code: _Optional[str] = ..., raw_response: _Optional[bytes] = ..., error_details: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ...) -> None: ...

class ClaimRequest(_message.Message):
    __slots__ = ("request_id", "server_id", "affinity")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    server_id: str
    affinity: float
    def __init__(self, request_id: _Optional[str] = ..., server_id: _Optional[str] = ..., affinity: _Optional[float] = ...) -> None: ...

class ClaimResponse(_message.Message):
    __slots__ = ("request_id", "server_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    server_id: str
    def __init__(self, request_id: _Optional[str] = ..., server_id: _Optional[str] = ...) -> None: ...

class Stream(_message.Message):
    __slots__ = ("stream_id", "request_id", "sent_at", "expiry", "open", "message", "ack", "close")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    request_id: str
    sent_at: int
    expiry: int
    open: StreamOpen
    message: StreamMessage
    ack: StreamAck
    close: StreamClose
    def __init__(self, stream_id: _Optional[str] = ..., request_id: _Optional[str] = ..., sent_at: _Optional[int] = ..., expiry: _Optional[int] = ..., open: _Optional[_Union[StreamOpen, _Mapping]] = ..., message: _Optional[_Union[StreamMessage, _Mapping]] = ..., ack: _Optional[_Union[StreamAck, _Mapping]] = ..., close: _Optional[_Union[StreamClose, _Mapping]] = ...) -> None: ...

class StreamOpen(_message.Message):
    __slots__ = ("node_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StreamMessage(_message.Message):
    __slots__ = ("message", "raw_message")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RAW_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: _any_pb2.Any
    raw_message: bytes
    def __init__(self, message: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., raw_message: _Optional[bytes] = ...) -> None: ...

class StreamAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StreamClose(_message.Message):
    __slots__ = ("error", "code")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    error: str
    code: str
    def __init__(self, error: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...
