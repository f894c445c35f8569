"""Sinks: files, HLS segments, RTMP/SRT streams, WebSocket audio, JPEG images."""
from .base import PacketSink, SinkStartError
from .file import FileSink
from .images import ImageSink
from .segments import HLSSink
from .stream import StreamSink
from .template import render_filename
from .websocket import WebSocketSink

__all__ = ["FileSink", "HLSSink", "ImageSink", "PacketSink", "SinkStartError", "StreamSink",
           "WebSocketSink", "render_filename"]
