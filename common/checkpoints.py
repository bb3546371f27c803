"""Trainer folders shared by the SFT and RL stages: which checkpoint to resume, and the final model.

A checkpoint is complete once its COMPLETE marker exists. `CheckpointMarker` writes it (atomically:
a temporary file, fsync, rename) from the trainer's `on_save`, which transformers calls once every
file of the checkpoint is written (with several ranks, after a barrier, since each rank writes its
own RNG state). transformers' own trainer_state.json is not enough: it is written in place, so a
process killed while writing it leaves a file that exists but does not parse. Checkpoints written
before the marker existed are not resumed from. `final/` appears only by an atomic rename of a fully
written `final.tmp/`, so a stage whose final/ exists is finished.

`DriverWatch` stops a pipeline's training worker whose driver is gone (common/lease.py): it checks
at the end of every step, before the step's metrics are logged and its checkpoint saved, and again
before the marker, so a checkpoint written while the driver died is never marked complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import TrainerCallback

from common import atomic
from common.lease import check_driver

MARKER = "COMPLETE"


def latest_complete_checkpoint(folder: Path) -> Path | None:
    done = [p for p in folder.glob("checkpoint-*") if (p / MARKER).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def mark_complete(checkpoint: Path, step: int) -> None:
    """Write the marker last and atomically: it exists only once every byte before it is on disk."""
    atomic.write_text(checkpoint / MARKER, json.dumps({"step": step}), durable=True)


class CheckpointMarker(TrainerCallback):
    """Marks each checkpoint complete once the trainer has saved all of it."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its own files (RNG state) before rank 0 marks
        if state.is_world_process_zero:
            mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)


class DriverWatch(TrainerCallback):
    """Raises DriverLost (common/lease.py) at the next step boundary once the pipeline's driver is
    gone; a no-op for a stage run on its own. Put it before the callbacks that write anything."""

    def on_step_end(self, args, state, control, **kwargs):
        check_driver()

    def on_log(self, args, state, control, logs=None, **kwargs):
        check_driver()

    def on_save(self, args, state, control, **kwargs):
        check_driver()


def save_final(trainer, out_dir: Path, summary_name: str, summary: dict, keep_checkpoints: bool = True) -> Path:
    """Model + tokenizer + a JSON summary into <out_dir>/final, atomically; then, unless
    `keep_checkpoints`, <out_dir>/checkpoints is deleted (final/ already marks the stage finished)
    except its completions/ folder: GRPO's tables of every sampled completion and its rewards are
    research data, not a way to resume.

    Called on every rank of a data-parallel run: `save_model` is collective (it gathers sharded
    weights) and writes on rank 0 only; rank 0 alone renames, and no rank returns before final/ exists.
    """
    final = out_dir / "final"
    main = trainer.is_world_process_zero()
    tmp = atomic.fresh_tmp_dir(final) if main else atomic.tmp_dir(final)
    trainer.accelerator.wait_for_everyone()
    check_driver()
    trainer.save_model(str(tmp))
    if main:
        trainer.processing_class.save_pretrained(str(tmp))
        (tmp / summary_name).write_text(json.dumps(summary, indent=2, default=str))
        check_driver()
        atomic.publish_dir(tmp, final)
        if not keep_checkpoints:
            folder = out_dir / "checkpoints"
            for path in folder.glob("*"):
                if path.name != "completions":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    trainer.accelerator.wait_for_everyone()
    return final
