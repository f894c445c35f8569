"""lkmedia: LiveKit egress and ingress as a composable PyAV media graph."""
__version__ = "0.1.0"
