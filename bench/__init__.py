"""Benchmarks of lkmedia against ffmpeg and gst-launch: see bench/README.md."""
