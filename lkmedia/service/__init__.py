"""The egress worker service: Go-egress-compatible config, admission, health and metrics.

Modules: ``config`` (YAML + env, as the Go egress reads them), ``admission`` (cpu_cost rules and
StartEgress affinity), ``health`` (health_port JSON), ``metrics`` (prometheus_port, Go names).
"""
