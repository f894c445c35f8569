"""A LiveKit participant of our own that subscribes and hands out encoded media.

``livekit.rtc`` only gives decoded frames; this speaks LiveKit's signalling (``signal``)
and receives over aiortc's ICE/DTLS/SRTP with receivers that never decode (``receiver``,
``frames``), dating frames on one clock per participant (``clock``). ``subscriber``
puts them together; ``lkmedia.sources.livekit_encoded`` makes a graph source of it.
"""
from .clock import ParticipantClock, StreamClock
from .frames import EncodedFrame
from .signal import SignalClient, SignalError
from .subscriber import RemoteTrack, Subscriber

__all__ = ["EncodedFrame", "ParticipantClock", "RemoteTrack", "SignalClient", "SignalError", "StreamClock",
           "Subscriber"]
