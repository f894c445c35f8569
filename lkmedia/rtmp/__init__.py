"""An asyncio RTMP (and RTMPS) server for ingest: handshake, chunk stream, AMF0 commands,
the stream key checked before a publish is accepted, media out as FLV tags.

Written for lkmedia (``amf0``, ``chunks``, ``flv``, ``server``); imports neither the engine
nor livekit, so the ingress service can run it without the media stack.
"""
from .flv import FlvTag, FlvWriter
from .server import Limits, PublishRefused, PublishRequest, RtmpServer, RtmpSession
from .tls import tls_context

__all__ = ["FlvTag", "FlvWriter", "Limits", "PublishRefused", "PublishRequest", "RtmpServer", "RtmpSession",
           "tls_context"]
