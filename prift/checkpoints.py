"""Trainer folders shared by the SFT and RL stages: which checkpoint to resume, and the final model.

A checkpoint is complete once transformers has written its trainer_state.json (the last file it
writes); `final/` appears only by an atomic rename of a fully written `final.tmp/`, so a stage whose
final/ exists is finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def latest_complete_checkpoint(folder: Path) -> Path | None:
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def save_final(trainer, out_dir: Path, summary_name: str, summary: dict) -> Path:
    """Model + tokenizer + a JSON summary into <out_dir>/final, atomically."""
    final, tmp = out_dir / "final", out_dir / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    trainer.processing_class.save_pretrained(str(tmp))
    (tmp / summary_name).write_text(json.dumps(summary, indent=2, default=str))
    tmp.rename(final)
    return final
