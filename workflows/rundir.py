"""The run directory and its manifest: the single source of truth for what is finished.

    <storage>/<experiment>/prior/            the reference signals, shared by every run of the sweep
    <storage>/<experiment>/<run_name>/
      config.yaml     the resolved config of this run (method and seed filled in)
      manifest.json   per stage: status, hash of what it depends on, outputs, metrics, MLflow run id
      sft/ rl/        checkpoints and final/
      eval/<model>/<task>/

`run_name` comes from the config (method, model, seed, short hash), so submitting the same config
again finds the same folder: a stage whose manifest entry is done with the same hash, and whose
outputs exist, is skipped; anything else runs again (training stages resume from their newest
checkpoint). Only the driver writes the manifest, always through a temporary file and a rename.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from common import atomic
from common.digest import json_digest
from rl.learning_signal import learning_signal


def config_hash(value) -> str:
    data = asdict(value) if hasattr(value, "__dataclass_fields__") else value
    return json_digest(data)[:10]


def run_name(method: str, model: str, seed: int, digest: str) -> str:
    short = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name).strip("-").lower()
    return f"{method}-{short}-s{seed}-{digest[:8]}"


class Manifest:
    def __init__(self, folder: Path):
        self.path = folder / "manifest.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def save(self) -> None:
        atomic.write_text(self.path, json.dumps(self.data, indent=2, default=str))

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {})

    def is_done(self, name: str, digest: str, outputs_exist: bool) -> bool:
        entry = self.data["stages"].get(name, {})
        return entry.get("status") == "done" and entry.get("hash") == digest and outputs_exist

    def mark(self, name: str, **fields) -> None:
        self.stage(name).update(fields)
        self.save()


def rl_signal(folder: Path) -> dict | None:
    """The RL stage's learning signal (rl/learning_signal.py), if it ran: judged again from the log
    history in rl/final/prift_rl.json, so runs finished under an older rule are judged as new ones."""
    summary = folder / "rl" / "final" / "prift_rl.json"
    if not summary.exists():
        return None
    done = json.loads(summary.read_text())
    return learning_signal(done["log_history"], done["learning_signal"]["weights_changed"])


def run_label(stage: str, signal: dict | None) -> str:
    """'rl', or 'rl: no learning signal' for an RL model that is not an RL result."""
    return f"{stage}: no learning signal" if stage == "rl" and signal and not signal["ok"] else stage
