"""Preflight: everything about a config that can be checked before any compute, cheapest first.

`prift run` calls `preflight` before the first stage and `prift validate` calls the very same
function, so `validate` never says "ok" to a config that `run` would refuse. Checked, reading no
model weights, in this order:

    config     types, names and ranges of every field (workflows/config.py, before this runs), and
               `pipeline.storage` (not relative under `ray job submit`)
    resources  the GPUs asked for against the Ray cluster's, the vLLM server's included (this starts
               the run's Ray if needed)
    local      what is on this machine: models (folder, config, weights present, tokenizer, chat
               template where the stages format chat turns), every line and row of the SFT data,
               every evaluation task's rows and generation backend, the RL prompts, their overlap with
               every evaluation task, the rollout backend
    hub        the same checks for whatever names a Hugging Face hub model or dataset: only when
               everything above passed, so a config that would be refused anyway downloads nothing
    weight sync  (only when all else passed) that colocated vLLM gets weight updates here

Every check of the config, resources and local tiers runs even when another failed; one
PreflightError names every problem. A network failure in the hub tier is a message naming what
could not be fetched, never a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from common.errors import InputError
from workflows.config import RunConfig, storage_problem

log = logging.getLogger(__name__)


class PreflightError(InputError):
    """Every problem preflight found, each the message of one check."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = [f"- {p}".replace("\n", "\n  ") for p in problems]
        found = f"{len(problems)} problem{'s' * (len(problems) > 1)} found before anything ran"
        super().__init__(found + ":\n" + "\n".join(lines))


class ResourceError(PreflightError):
    """The config asks for more than the Ray cluster has."""


def preflight(cfg: RunConfig) -> None:
    """Run every check, cheapest first; raise one PreflightError naming all the problems found."""
    hub = hub_inputs(cfg)
    problems = _run(cfg, [check_storage, check_resources])
    problems += _run(cfg, [check for check in CONTENT_CHECKS if not hub[check]])
    if not problems:  # the network only for a config nothing cheaper refused
        for check in (check for check in CONTENT_CHECKS if hub[check]):
            problems += _online(cfg, check, hub[check])
            if problems:  # the next hub check would wait out the same network's retries (46 s for a tokenizer)
                break
    if not problems:  # last: it loads the model, which bad input must never get to
        problems += check_weight_sync(cfg)
    if problems:
        raise PreflightError(problems)
    log.info("preflight: config, resources, model, data, tasks and RL prompts are fine")


def _run(cfg: RunConfig, checks) -> list[str]:
    problems = []
    for check in checks:
        try:
            check(cfg)
        except InputError as e:
            problems += e.problems if isinstance(e, PreflightError) else [str(e)]
    return problems


def _online(cfg: RunConfig, check, names: list[str]) -> list[str]:
    """`check` on inputs fetched from the hub; a network failure the loaders let through becomes a
    message naming what could not be fetched."""
    try:
        return _run(cfg, [check])
    except _network_errors() as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return [f"could not fetch {', '.join(names)} from the Hugging Face hub ({type(e).__name__}: {first[:300]}); "
                "check the network (or HF_ENDPOINT, HF_TOKEN), or point these fields at local files or folders"]


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises: OSError covers ConnectionError, timeouts, and huggingface_hub's
    HTTP errors; httpx's own errors (huggingface_hub's client) are not OSErrors."""
    try:
        import httpx
    except ImportError:
        return (OSError,)
    return (OSError, httpx.HTTPError)


def check_storage(cfg: RunConfig) -> None:
    problem = storage_problem(cfg.pipeline)
    if problem:
        raise InputError(problem)


def hub_inputs(cfg: RunConfig) -> dict:
    """For each content check, the hub models and datasets it would fetch (`field 'name'`); [] means
    it reads only local files and installed packages. Each rule says what the loader it guards does
    with such a name (common.models.check_model, common.rows.read_rows)."""
    on = cfg.pipeline.stages
    model = _hub_model("model", cfg.model)
    reference = cfg.prior.reference
    uses_reference = reference and reference != cfg.model and (on.prior or on.sft) and _uses_prior(cfg)
    eval_sets = [_hub_task(f"eval.tasks[{i}]", t) for i, t in enumerate(cfg.eval.tasks)]
    rl_sets = [_hub_task(f"rl.prompts.tasks[{i}]", t) for i, t in enumerate(cfg.rl.prompts.tasks)]
    found = {
        check_models: [model, _hub_model("prior.reference", reference) if uses_reference else None],
        check_sft_data: ([_hub_data(field, source.path) for field, source in _sft_sources(cfg)]
                         + (eval_sets if on.eval else [])) if on.sft or on.prior else [],  # + overlap check
        check_tasks: [model, *eval_sets, cfg.heldout and _hub_data("heldout.path", cfg.heldout.path)]
        if on.eval else [],  # the eval check reads the model's tokenizer, and the held-out rows
        check_rl: [*rl_sets, *eval_sets] if on.rl else [],  # the overlap check reads every eval set
    }
    return {check: list(dict.fromkeys(n for n in names if n)) for check, names in found.items()}


def _hub_model(field: str, name: str) -> str | None:
    from common.models import EMBEDDED, HUB_ID

    hub = name not in EMBEDDED and not Path(name).expanduser().exists() and HUB_ID.fullmatch(name)
    return f"{field} {name!r}" if hub else None


def _sft_sources(cfg: RunConfig) -> list[tuple[str, object]]:
    """(field, source) of every SFT data source: `data` itself and each `data.mix` entry."""
    return [("data.path", cfg.data)] + [(f"data.mix[{i}].path", s) for i, s in enumerate(cfg.data.mix)]


def _hub_data(field: str, path: str) -> str | None:
    from common.rows import on_hub

    hub = path and not path.startswith("reasoning_gym:") and on_hub(path)
    return f"{field} {path!r}" if hub else None


def _hub_task(field: str, spec) -> str | None:
    from evals.tasks import TASKS

    from common.rows import on_hub

    source = spec.source or TASKS[spec.name].default_source
    hub = not source.startswith("reasoning_gym:") and on_hub(source)
    return f"{field} {source!r}" if hub else None


def check_models(cfg: RunConfig) -> None:
    """The base model, and the prior's reference when a PriFT method will read it."""
    from common.models import check_model
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


def _uses_prior(cfg: RunConfig) -> bool:
    return any(rule.needs_prior for rule in cfg.rules().values())


def check_sft_data(cfg: RunConfig) -> None:
    """Every SFT row; and, when the pipeline evaluates, no evaluation problem among their prompts."""
    from prift.data import check_data

    on = cfg.pipeline.stages
    if on.sft or on.prior:
        check_data(cfg.data)
        if on.eval:
            check_no_sft_eval_overlap(cfg)


def last_user_turns(data) -> list[tuple[int, str]]:
    """(row index, last user turn) of each row of `data` that has one: what the overlap checks compare."""
    from prift.data import load_rows, validate_rows

    return [(i, user[-1]) for i, (prompt, _) in enumerate(validate_rows(load_rows(data), data))
            if (user := [m["content"] for m in prompt if m["role"] == "user"])]


def check_no_sft_eval_overlap(cfg: RunConfig) -> None:
    """Refuse evaluation rows whose problem is the prompt (last user turn) of an SFT row: a model
    trained on its answer would be scored on it."""
    from evals.tasks import TaskError, eval_overlaps, problem_keys

    train = {}
    for i, turn in last_user_turns(cfg.data):
        train |= dict.fromkeys(problem_keys(turn), f"row {i}")
    overlaps = eval_overlaps(train, cfg.eval.tasks)
    if overlaps:
        shown = "; ".join(f"{task} row {eid} = SFT {rid}" for task, eid, rid in overlaps[:5])
        raise TaskError(f"data: {len(overlaps)} evaluation problem(s) are SFT prompts: {shown}")


def check_heldout(cfg: RunConfig) -> None:
    """The held-out demonstrations: every row readable, and none whose prompt is an SFT prompt (a
    held-out loss on trained rows would measure memory, not generalisation)."""
    from evals.tasks import prompt_hash
    from prift.data import DataError, check_data

    def prompts(data) -> dict[str, int]:
        return {prompt_hash(turn): i for i, turn in last_user_turns(data)}

    heldout = cfg.heldout
    try:
        check_data(heldout)
    except DataError as e:
        raise DataError(f"heldout: {e}") from None
    if cfg.pipeline.stages.sft:
        sft = prompts(cfg.data)
        shared = [(i, sft[k]) for k, i in prompts(heldout).items() if k in sft]
        if shared:
            shown = "; ".join(f"held-out row {i} = SFT row {j}" for i, j in sorted(shared)[:5])
            raise DataError(f"heldout: {len(shared)} row(s) have an SFT prompt: {shown} "
                            f"(for the SFT source itself, set heldout.skip to data.limit, {cfg.data.limit})")


def check_tasks(cfg: RunConfig) -> None:
    """Every task's rows when the eval stage runs, and its generation backend."""
    from evals.tasks import load_examples

    if not cfg.pipeline.stages.eval:
        return
    problems = []
    for spec in cfg.eval.tasks:
        problems += _collect(lambda: load_examples(spec))
    if cfg.heldout:
        problems += _collect(lambda: check_heldout(cfg))
    if not problems:  # prompt + max_new_tokens within the context (tokenizer and config only)
        from evals.stage import check_eval_inputs

        try:
            problems += _collect(lambda: check_eval_inputs(cfg.model, cfg.eval))
        except (OSError, ValueError):  # no loadable tokenizer or config: check_models names that
            pass
    if cfg.eval.backend == "vllm":
        from evals.generate import vllm_available

        if not vllm_available():
            problems.append("eval.backend: vllm asked for but vllm is not installed "
                            "(pip install -e '.[gpu]' or '.[cpu]')")
    _raise(problems)


def check_rl(cfg: RunConfig) -> None:
    """The RL prompts, none of them an evaluation prompt, and a rollout backend that exists here."""
    if not cfg.pipeline.stages.rl:
        return
    from rl.grpo import choose_rollout
    from rl.prompts import build_rows, check_no_eval_overlap

    problems = _collect(lambda: check_no_eval_overlap(build_rows(cfg.rl.prompts, cfg.eval.tasks), cfg.eval.tasks))
    problems += _collect(lambda: _as_input(lambda: choose_rollout(cfg.rl.rollout)))
    _raise(problems)


def check_weight_sync(cfg: RunConfig) -> list[str]:
    """Colocated vLLM must receive the trainer's weights on this host (rl/weight_sync.py), probed on
    the base model in a child process, so a host where it cannot is found before SFT. With
    `rollout: auto` that is not a problem: the RL stage falls back to hf, as logged here."""
    from common.models import resolve_model_path
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


def check_resources(cfg: RunConfig) -> None:
    """GPUs asked for by the stages that run must exist in the Ray cluster: Ray would otherwise wait
    for them forever. The RL stage with a vLLM server started here asks for the trainer's GPUs and
    the server's together, on one node (rl/vllm_server.py reserves them as one placement group).
    Starts the run's Ray (workflows/ray_session.py) only when GPUs are asked for."""
    from rl.vllm_server import reserves_server_gpus

    res, on = cfg.pipeline.resources, cfg.pipeline.stages
    stages = {f.name: getattr(res, f.name) for f in dataclasses.fields(res) if getattr(on, f.name)}
    server = cfg.rl.server.tensor_parallel_size if on.rl and reserves_server_gpus(cfg.rl) else 0
    problems = []
    if server and res.rl.gpus == 0:
        problems.append("rl.rollout: vllm_server with pipeline.resources.rl.gpus 0: the trainer sends its weights to "
                        "the server over NCCL, from a GPU; give the RL stage a GPU (pipeline.resources.rl.gpus: 1)")
    if server and res.rl.workers > 1:
        problems.append(f"rl.rollout: vllm_server with pipeline.resources.rl.workers {res.rl.workers}: the server's "
                        "GPUs are reserved for one trainer; use workers: 1, or start the server yourself "
                        "(rl.server.start: false)")
    if any(r.gpus > 0 for r in stages.values()) or server:
        from workflows.ray_session import cluster_gpus, node_gpus

        have = cluster_gpus(cfg)
        wanted = {k: r for k, r in stages.items() if r.gpus * r.workers > have}
        if wanted:
            asks = ", ".join(f"pipeline.resources.{k}: {r.workers} worker(s) x {r.gpus:g} GPU"
                             for k, r in wanted.items())
            problems.append(f"the Ray cluster has {have:g} GPU(s); the config asks for more: {asks}")
        largest = max(node_gpus(cfg), default=0) if server and "rl" not in wanted else 0
        if server and "rl" not in wanted and res.rl.gpus + server > largest:
            problems.append(
                f"the RL stage needs pipeline.resources.rl.gpus {res.rl.gpus:g} for the trainer + "
                f"rl.server.tensor_parallel_size {server} for the vLLM server = {res.rl.gpus + server:g} GPU(s) "
                f"on one node; the largest node of the Ray cluster has {largest:g}")
    if problems:
        raise ResourceError(problems)


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


CONTENT_CHECKS = (check_models, check_sft_data, check_tasks, check_rl)
"""The checks that read models and data, in the order the local and the hub tiers run them."""
