"""Typed configs from YAML: every bad field reported at once, unknown keys are errors, `--set a.b=c`.

`from_dict(Cls, mapping)` builds a (nested) dataclass, checking each value against the field's type
annotation (str, int, float, bool, Literal, X | None, list[X], nested dataclasses). It raises one
ConfigError listing every problem as `path: got VALUE, expected WHAT`, before anything is computed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evals.stage import EvalStageConfig
from prift.data import DataConfig
from prift.prior import PriorConfig
from prift.sft import SFTStageConfig
from rl.grpo import RLStageConfig


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Resources:
    """What a stage's Ray task asks for (Ray waits until a node has it free)."""

    cpus: float = 1.0
    """CPU cores."""
    gpus: float = 0.0
    """GPUs (fractions share one); a config asking for GPUs on a cluster without any fails up front."""
    workers: int = 1
    """sft and rl only: data-parallel Ray Train workers, each with these cpus/gpus (workflows/distributed.py)."""

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers: got {self.workers}, expected at least 1")


@dataclass(frozen=True)
class StageResources:
    prior: Resources = field(default_factory=Resources)
    sft: Resources = field(default_factory=Resources)
    rl: Resources = field(default_factory=Resources)
    eval: Resources = field(default_factory=Resources)
    """Per benchmark task (eval fans out one Ray task per model and benchmark)."""

    def __post_init__(self):
        for stage in ("prior", "eval"):
            if getattr(self, stage).workers != 1:
                raise ValueError(f"{stage}.workers: only sft and rl train on several workers; got {getattr(self, stage).workers}")


@dataclass(frozen=True)
class StageSwitches:
    """Which stages run (a stage that is off is neither run nor required by the later ones)."""

    prior: bool = True
    sft: bool = True
    rl: bool = True
    eval: bool = True


@dataclass(frozen=True)
class PipelineConfig:
    """What `prift run` chains, and where it keeps and tracks the results."""

    experiment: str = "prift"
    """MLflow experiment, and the folder under `storage` that holds this sweep's runs."""
    storage: str = "runs"
    """Root of the run directories (a shared filesystem on a cluster)."""
    methods: list[str] = field(default_factory=lambda: ["prift_mass"])
    """SFT methods to compare (sft, dft, prift_prob, prift_mass); one run each, per seed."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds (SFT and RL); one run per method and seed."""
    stages: StageSwitches = field(default_factory=StageSwitches)
    """Stages to run."""
    eval_models: list[Literal["base", "sft", "rl"]] = field(default_factory=lambda: ["base", "sft", "rl"])
    """Which checkpoints the eval stage scores (the base model once per sweep)."""
    resources: StageResources = field(default_factory=StageResources)
    """Ray resources per stage task."""
    ray_address: str | None = None
    """Ray cluster to join; None: RAY_ADDRESS if set (ray job submit sets it), else a local Ray."""

    def __post_init__(self):
        from prift.weights import resolve_method

        for m in self.methods:
            resolve_method(m)
        if not self.methods or not self.seeds:
            raise ValueError("methods and seeds must each name at least one value")


@dataclass(frozen=True)
class StagesConfig:
    """What the stages run: a base model, its SFT data, the prior, the trainer and the evaluation."""

    model: str = "smollm2-135m-instruct"
    """Base model to fine-tune (local folder, hub name, or `smollm2-135m-instruct`, shipped by a package)."""
    output_dir: str = "runs/default"
    """Run directory: prior/ (signal cache) and sft/ (checkpoints, final/) go under it."""
    data: DataConfig = field(default_factory=DataConfig)
    """SFT data and formatting."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    """The frozen reference and how its signals are produced."""
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    """Training settings."""
    rl: RLStageConfig = field(default_factory=RLStageConfig)
    """GRPO settings for `prift rl`."""
    eval: EvalStageConfig = field(default_factory=EvalStageConfig)
    """Benchmarks, sampling and generation backend for `prift eval`."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """Sweep, stages, resources, storage and tracking for `prift run` (the other commands ignore it)."""


def from_dict(cls, data, path: str = ""):
    problems: list[str] = []
    value = _build(cls, data, path, problems)
    if problems:
        raise ConfigError(problems)
    return value


def _build(cls, data, path, problems):
    if not isinstance(data, dict):
        problems.append(f"{path or '<root>'}: got {data!r}, expected a mapping for {cls.__name__}")
        return None
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    before = len(problems)
    for key in data:
        if key not in names:
            problems.append(f"{_join(path, key)}: unknown key (expected one of: {', '.join(sorted(names))})")
    kwargs = {}
    for name in [f.name for f in dataclasses.fields(cls) if f.name in data]:
        kwargs[name] = _check(hints[name], data[name], _join(path, name), problems)
    if len(problems) > before:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a dataclass's own __post_init__ checks
        problems.append(f"{path or '<root>'}: {e}")
        return None


def _check(tp, value, path, problems):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, path, problems) if len(inner) == 1 else value
    if origin is typing.Literal:
        if value not in args:
            problems.append(f"{path}: got {value!r}, expected one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{path}: got {value!r}, expected a list")
            return value
        return [_check(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)] if args else value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool) and (type(value) is not tp):
        problems.append(f"{path}: got {value!r}, expected {tp.__name__}")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=c` assignments (values parsed as YAML: 3 -> int, true -> bool, [x, y] -> list)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"--set {item}: expected KEY.PATH=VALUE"])
        key, raw = item.split("=", 1)
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError([f"--set {key}: {p} is not a mapping"])
        node[last] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path, overrides: list[str] = (), cls=StagesConfig):
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    data = yaml.safe_load(path.read_text()) or {}
    return from_dict(cls, apply_overrides(data, list(overrides)))
