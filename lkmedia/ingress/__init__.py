"""Ingress: RTMP, WHIP and URL inputs published into a LiveKit room (the Go ingress's job)."""
