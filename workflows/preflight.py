"""Preflight: everything about a config that can be checked before any compute, all of it at once.

`prift run` calls `preflight` before the first stage and `prift validate` calls the very same
function, so `validate` never says "ok" to a config that `run` would refuse. Checked, reading no
model weights:

    config     types, names and ranges of every field (workflows/config.py, before this runs)
    model      the base model and the prior's reference: folder, config, weights present, tokenizer,
               chat template where the stages format chat turns (prift.models.check_model)
    data       every line and row of the SFT data
    tasks      every evaluation task's rows, and the generation backends asked for
    RL         the prompt set, its overlap with every evaluation task, the rollout backend, and
               (last, only when all else passed) that colocated vLLM gets weight updates here
    resources  the GPUs asked for against the Ray cluster's (this starts the run's Ray if needed)

Every check runs even when another failed; one PreflightError names every problem.
"""

from __future__ import annotations

import dataclasses
import logging

from common.errors import InputError
from workflows.config import StagesConfig

log = logging.getLogger(__name__)


class ResourceError(InputError):
    """The config asks for more than the Ray cluster has."""


class PreflightError(InputError):
    """Every problem preflight found, each the message of one check."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = [f"- {p}".replace("\n", "\n  ") for p in problems]
        super().__init__(f"{len(problems)} problem{'s' * (len(problems) > 1)} found before anything ran:\n" + "\n".join(lines))


def preflight(cfg: StagesConfig) -> None:
    """Run every check; raise one PreflightError naming all the problems found."""
    problems = []
    for check in (check_models, check_sft_data, check_tasks, check_rl, check_resources):
        try:
            check(cfg)
        except InputError as e:
            problems += e.problems if isinstance(e, PreflightError) else [str(e)]
    if not problems:  # last: it loads the model, which bad input must never get to
        problems += check_weight_sync(cfg)
    if problems:
        raise PreflightError(problems)
    log.info("preflight: config, model, data, tasks, RL prompts and resources are fine")


def check_models(cfg: StagesConfig) -> None:
    """The base model, and the prior's reference when a PriFT method will read it."""
    from prift.models import check_model
    from prift.prior import check_same_vocab

    on = cfg.pipeline.stages
    chat = on.prior or on.sft or on.rl
    problems = _collect(lambda: check_model(cfg.model, "model", chat_template=chat))
    reference = cfg.prior.reference
    if reference and reference != cfg.model and (on.prior or on.sft) and _uses_prior(cfg):
        found = _collect(lambda: check_model(reference, "prior.reference", chat_template=True))
        if not found and not problems:
            found = _collect(lambda: _as_input(lambda: check_same_vocab(cfg.model, reference)))
        problems += found
    _raise(problems)


def _uses_prior(cfg: StagesConfig) -> bool:
    from prift.weights import resolve_method

    return any(resolve_method(m).needs_prior for m in cfg.pipeline.methods)


def check_sft_data(cfg: StagesConfig) -> None:
    from prift.data import check_data

    on = cfg.pipeline.stages
    if on.sft or on.prior:
        check_data(cfg.data)


def check_tasks(cfg: StagesConfig) -> None:
    """Every task's rows when the eval stage runs, and its generation backend."""
    from evals.tasks import load_examples

    if not cfg.pipeline.stages.eval:
        return
    problems = []
    for spec in cfg.eval.tasks:
        problems += _collect(lambda: load_examples(spec))
    if not problems:  # prompt + max_new_tokens within the context (tokenizer and config only)
        from evals.stage import check_eval_inputs

        try:
            problems += _collect(lambda: check_eval_inputs(cfg.model, cfg.eval))
        except (OSError, ValueError):  # no loadable tokenizer or config: check_models names that
            pass
    if cfg.eval.backend == "vllm":
        from evals.generate import vllm_available

        if not vllm_available():
            problems.append("eval.backend: vllm asked for but vllm is not installed (pip install -e '.[gpu]' or '.[cpu]')")
    _raise(problems)


def check_rl(cfg: StagesConfig) -> None:
    """The RL prompts, none of them an evaluation prompt, and a rollout backend that exists here."""
    if not cfg.pipeline.stages.rl:
        return
    from rl.grpo import choose_rollout
    from rl.prompts import build_rows, check_no_eval_overlap

    problems = _collect(lambda: check_no_eval_overlap(build_rows(cfg.rl.prompts), cfg.eval.tasks))
    problems += _collect(lambda: _as_input(lambda: choose_rollout(cfg.rl.rollout)))
    _raise(problems)


def check_weight_sync(cfg: StagesConfig) -> list[str]:
    """Colocated vLLM must receive the trainer's weights on this host (rl/weight_sync.py), probed on
    the base model in a child process, so a host where it cannot is found before SFT. With
    `rollout: auto` that is not a problem: the RL stage falls back to hf, as logged here."""
    from prift.models import resolve_model_path
    from rl.grpo import choose_rollout, engine_dtype
    from rl.weight_sync import probe_in_subprocess

    if not cfg.pipeline.stages.rl or choose_rollout(cfg.rl.rollout) != "vllm_colocate":
        return []
    try:
        path = resolve_model_path(cfg.model)
    except OSError:  # check_models names it
        return []
    problem = probe_in_subprocess(path, cfg.rl.max_model_len, engine_dtype(cfg.rl))
    if problem is None:
        log.info("preflight: a weight update reaches colocated vLLM on this host")
        return []
    if cfg.rl.rollout == "auto":
        log.warning("preflight: colocated vLLM does not get weight updates here (%s); RL will use hf rollouts", problem)
        return []
    return [f"rl.rollout: vllm_colocate does not work on this host: {problem}. "
            "Use rl.rollout: hf (slower, always works) or auto (falls back to hf by itself)."]


def check_resources(cfg: StagesConfig) -> None:
    """GPUs asked for by the stages that run must exist in the Ray cluster: Ray would otherwise wait
    for them forever. Starts the run's Ray (workflows/ray_session.py) only when GPUs are asked for."""
    res, on = cfg.pipeline.resources, cfg.pipeline.stages
    stages = {f.name: getattr(res, f.name) for f in dataclasses.fields(res) if getattr(on, f.name)}
    if not any(r.gpus > 0 for r in stages.values()):
        return
    from workflows.ray_session import cluster_gpus

    have = cluster_gpus(cfg)
    wanted = {k: r for k, r in stages.items() if r.gpus * r.workers > have}
    if wanted:
        asks = ", ".join(f"pipeline.resources.{k}: {r.workers} worker(s) x {r.gpus:g} GPU" for k, r in wanted.items())
        raise ResourceError(f"the Ray cluster has {have:g} GPU(s); the config asks for more: {asks}")


def _collect(check) -> list[str]:
    """[] if `check()` passes, else its InputError's message."""
    try:
        check()
    except InputError as e:
        return [str(e)]
    return []


def _as_input(check) -> None:
    """Run a check written for the stages, whose refusals are ValueError/RuntimeError, as an input check."""
    try:
        check()
    except (ValueError, RuntimeError) as e:
        raise InputError(str(e)) from None


def _raise(problems: list[str]) -> None:
    if problems:
        raise PreflightError(problems)
