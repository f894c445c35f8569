"""``job.json`` beside a running job's outputs: what a restarted worker needs to report the
job if its process, or the whole worker, died (SIGKILL, OOM, a node crash with the volume
kept). The job's supervisor alone writes it, keeps its Info current and removes it once
the final Info has been relayed.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

RECORD_FILE = "job.json"


@dataclass
class JobRecord:
    kind: str  # the job kind's name ("egress")
    spec: Any  # the encoded spec (codec.encode)
    info: bytes
    pid: int
    node_id: str

    def write(self, job_dir: str) -> None:
        os.makedirs(job_dir, exist_ok=True)
        body = {"kind": self.kind, "spec": self.spec, "info": base64.b64encode(self.info).decode(),
                "pid": self.pid, "node_id": self.node_id}
        tmp = os.path.join(job_dir, RECORD_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(body, f)
        os.replace(tmp, os.path.join(job_dir, RECORD_FILE))

    @staticmethod
    def read(job_dir: str) -> JobRecord | None:
        try:
            with open(os.path.join(job_dir, RECORD_FILE)) as f:
                body = json.load(f)
            return JobRecord(str(body["kind"]), body["spec"], base64.b64decode(body["info"]), int(body["pid"]),
                             str(body.get("node_id", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def remove(job_dir: str) -> None:
        try:
            os.unlink(os.path.join(job_dir, RECORD_FILE))
        except FileNotFoundError:
            pass
