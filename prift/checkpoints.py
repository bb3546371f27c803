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


def save_final(trainer, out_dir: Path, summary_name: str, summary: dict, keep_checkpoints: bool = True) -> Path:
    """Model + tokenizer + a JSON summary into <out_dir>/final, atomically; then, unless
    `keep_checkpoints`, <out_dir>/checkpoints is deleted (final/ already marks the stage finished).

    Called on every rank of a data-parallel run: `save_model` is collective (it gathers sharded
    weights) and writes on rank 0 only; rank 0 alone renames, and no rank returns before final/ exists.
    """
    final, tmp = out_dir / "final", out_dir / "final.tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if main:
        trainer.processing_class.save_pretrained(str(tmp))
        (tmp / summary_name).write_text(json.dumps(summary, indent=2, default=str))
        tmp.rename(final)
        if not keep_checkpoints:
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return final
