"""Typed configs from YAML: every bad field reported at once, unknown keys are errors, `--set a.b=c`.

`from_dict(Cls, mapping)` builds a (nested) dataclass, checking each value against the field's type
annotation (str, int, float, bool, Literal, X | None, list[X], nested dataclasses), then runs each
section's own range and name checks (its `__post_init__`, see common/checks.py) even when some of
its fields had the wrong type, so no problem hides another. It raises one ConfigError listing every
problem as `path: got VALUE, expected WHAT`, before anything is computed. A YAML syntax error, in
the file or in a `--set` value, is a ConfigError too, with its line and column.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
import urllib.parse
from typing import Literal
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.checks import at_least, is_number, items, require, seed
from common.errors import FieldErrors, InputError, listing
from common.sharding import Sharding
from evals.stage import EvalStageConfig
from prift.data import DataConfig
from prift.prior import PriorConfig
from prift.sft import SFTStageConfig
from prift.weights import WeightRule, resolve_method
from rl.grpo import RLStageConfig


class ConfigError(InputError):
    """Every problem of a config: types, unknown keys, names, ranges, YAML syntax."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n" + listing(problems))


@dataclass(frozen=True)
class Resources:
    """What a stage's Ray task asks for (Ray waits until a node has it free)."""

    cpus: float = 1.0
    """CPU cores."""
    gpus: float = 0.0
    """GPUs (fractions share one); a config asking for GPUs on a cluster without any fails up front."""
    workers: int = 1
    """sft and rl only: data-parallel Ray Train workers, each with these cpus/gpus (workflows/distributed.py)."""
    sharding: Sharding = "ddp"
    """sft and rl only, with workers >= 2 and GPUs: `ddp` keeps a full replica of the weights, gradients
    and AdamW state on every worker; `fsdp` shards them over the workers (FSDP2 through transformers'
    integration, common/sharding.py), about 1/workers of them per GPU. docs/pipeline.md "Sharded training"."""

    def __post_init__(self):
        whole = is_whole_gpus(self.gpus)
        fsdp = self.sharding == "fsdp"
        require(
            at_least("cpus", self.cpus, 0),
            at_least("gpus", self.gpus, 0),
            None if whole else
            f"gpus: got {self.gpus!r}, expected a fraction of one GPU or a whole number (Ray's rule)",
            at_least("workers", self.workers, 1),
            # transformers refuses FSDP outside a distributed run, and accelerate turns FSDP on for
            # GPU process groups only: on CPU workers it would silently train full DDP replicas
            "sharding: fsdp (sft and rl only) shards over several workers; "
            f"got workers {self.workers!r}, expected at least 2"
            if fsdp and isinstance(self.workers, int) and self.workers < 2 else None,
            "sharding: fsdp (sft and rl only) needs GPU workers (accelerate shards on GPUs only); "
            f"got gpus {self.gpus!r}"
            if fsdp and is_number(self.gpus) and self.gpus <= 0 else None,
        )


def is_whole_gpus(gpus) -> bool:
    """Ray shares a GPU between tasks asking for fractions of it, but more than one must be whole."""
    return not isinstance(gpus, (int, float)) or gpus <= 1 or float(gpus).is_integer()


@dataclass(frozen=True)
class StageResources:
    """What each stage's Ray task (or each of its workers) asks for."""

    prior: Resources = field(default_factory=Resources)
    """The prior stage: one task per sweep, scoring the SFT data with the frozen reference."""
    sft: Resources = field(default_factory=Resources)
    """Per SFT worker (`workers` of them train data-parallel, `sharding` says how)."""
    rl: Resources = field(default_factory=Resources)
    """Per GRPO worker (a `vllm_server` rollout's GPUs come on top, reserved with them)."""
    eval: Resources = field(default_factory=Resources)
    """Per benchmark task (eval fans out one Ray task per model and benchmark)."""

    def __post_init__(self):
        others = [(stage, res) for stage in ("prior", "eval") if isinstance(res := getattr(self, stage), Resources)]
        require(
            *(f"{stage}.workers: only sft and rl train on several workers; got {res.workers}"
              for stage, res in others if res.workers != 1),
            *(f"{stage}.sharding: only sft and rl train sharded; got {res.sharding!r}, expected ddp"
              for stage, res in others if res.sharding != "ddp"),
        )


@dataclass(frozen=True)
class StageSwitches:
    """Which stages run (a stage that is off is neither run nor required by the later ones)."""

    prior: bool = True
    """Score the SFT data with the reference once per sweep (skipped when no method needs it)."""
    sft: bool = True
    """Fine-tune each method and seed (off: RL starts from the base model)."""
    rl: bool = True
    """GRPO from each SFT model."""
    eval: bool = True
    """Score the models of `eval_models` on `eval.tasks`."""


@dataclass(frozen=True)
class PipelineConfig:
    """What `prift run` chains, and where it keeps and tracks the results."""

    experiment: str = "prift"
    """MLflow experiment, and the folder under `storage` that holds this sweep's runs."""
    storage: str = "runs"
    """Root of the run directories (a shared filesystem on a cluster). Made absolute when the config
    is read (relative to the current directory; `~` and `file://` understood), so every Ray worker
    gets the same folder. Under `ray job submit` it must be absolute: see `storage_problem`."""
    methods: list[str] = field(default_factory=lambda: ["prift_mass"])
    """SFT methods to compare (any of prift.weights.METHODS: sft, dft, prift_prob, prift_mass, profit,
    prift_profit, neg_pk, prift_pk, eaft, prift_eaft, asft, prift_asft, rho1, iw_sft); one run each,
    per seed. The methods with a KL anchor (asft, prift_asft) load the resident reference whatever
    `prior.mode` says: the cache does not hold q's whole distribution."""
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
        from prift.weights import METHODS

        methods, seeds = items(self.methods), items(self.seeds)
        storage = self._resolve_storage()
        require(
            *(f"methods[{i}]: unknown method {m!r}, expected one of {', '.join(METHODS)}"
              for i, m in enumerate(methods) if isinstance(m, str) and m not in METHODS),
            *(seed(f"seeds[{i}]", s) for i, s in enumerate(seeds)),
            _nonempty_unique("methods", self.methods),
            _nonempty_unique("seeds", self.seeds),
            storage,
        )

    def _resolve_storage(self) -> str | None:
        """Make `storage` absolute in place (the problem with it, or None). Symlinks are kept: a
        shared mount may be reached through a link whose target differs between nodes. Under `ray job
        submit` a relative path is left as given, for preflight to refuse (`storage_problem`): the
        current directory there is Ray's per-job copy of the code."""
        from workflows.ray_session import ray_job_submission

        storage = self.storage
        if not isinstance(storage, str):
            return None
        if not storage.strip():
            return "storage: expected a folder path, got an empty string"
        scheme = URI_SCHEME.match(storage)
        if scheme and scheme.group(1).lower() != "file":
            return (f"storage: got {storage!r}, expected a filesystem path: the run folders, manifests and the "
                    "driver lock are files every node opens (mount the bucket and give the mount's path)")
        path = Path(urllib.parse.urlparse(storage).path if scheme else storage).expanduser()
        if path.is_absolute() or ray_job_submission() is None:
            object.__setattr__(self, "storage", os.path.abspath(path))
        return None


URI_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def storage_problem(pipeline: PipelineConfig) -> str | None:
    """Why `pipeline.storage` cannot hold this run's folders, or None. A relative path under `ray job
    submit` is refused: it would resolve inside Ray's per-job copy of the working directory, which
    is one node's local disk, a fresh folder for every submission (so a resubmitted pipeline would
    not find its runs to resume) and deleted by Ray when its cache fills."""
    from workflows.ray_session import ray_job_submission

    job = ray_job_submission()
    if job is None or Path(pipeline.storage).is_absolute():
        return None
    return (f"pipeline.storage: {pipeline.storage!r} is a relative path, and this driver runs under `ray job submit` "
            f"(submission {job}) in Ray's per-job copy of the code ({os.getcwd()}): the runs would land in that "
            "copy, on one node, and the next submission would not find them. Set pipeline.storage to an "
            "absolute path on a filesystem every node shares, e.g. --set pipeline.storage=/mnt/shared/prift-runs")


def _nonempty_unique(name: str, values) -> str | None:
    """A sweep axis must name something, and each value once: two runs of the same (method, seed)
    would share one run folder and train into it at the same time."""
    if not isinstance(values, list):
        return None
    if not values:
        return f"{name}: expected at least one value"
    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
    return f"{name}: {', '.join(repeated)} listed more than once" if repeated else None


@dataclass(frozen=True)
class RunConfig:
    """The whole run's config, one YAML file: the base model, its SFT data, the prior, each stage's
    settings (their dataclasses live in their stages' modules) and the pipeline's sweep."""

    model: str = "smollm2-135m-instruct"
    """Base model to fine-tune (local folder, hub name, or `smollm2-135m-instruct`, shipped by a package)."""
    output_dir: str = "runs/default"
    """Run directory: prior/ (signal cache) and sft/ (checkpoints, final/) go under it."""
    data: DataConfig = field(default_factory=DataConfig)
    """SFT data and formatting."""
    heldout: DataConfig | None = None
    """Held-out demonstrations in the SFT data's format, e.g. {path: reasoning_gym:gsm_symbolic, skip: 32,
    limit: 64, max_length: 320} (the SFT source with `skip` = its `limit`): every evaluated model gets
    `heldout_nll`, its unweighted NLL per response token on them (prift/heldout.py). None: off."""
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

    def __post_init__(self):
        rule = getattr(self.sft, "rule", None)  # a section that failed its own checks is None here
        methods = getattr(self.pipeline, "methods", None)
        if getattr(self.sft, "heldout_every", 0) and self.heldout is None:
            raise FieldErrors(["sft.heldout_every: the held-out curve needs rows: set the top-level `heldout` "
                               "(e.g. the SFT source with `skip` = its `limit`), or set heldout_every to 0"])
        if rule is not None and isinstance(methods, list) and len(methods) > 1:
            raise FieldErrors([
                f"sft.rule: a custom rule trains every run alike, so it cannot be swept under {len(methods)} method "
                f"names ({', '.join(map(str, methods))}): keep one name in pipeline.methods (the runs' label) or "
                "drop sft.rule (a rule worth sweeping belongs in prift/weights.py's METHODS)"
            ])

    def rules(self) -> dict[str, WeightRule]:
        """The weight rule each method of the sweep trains: `sft.rule` if set, else the method's own.
        The one place that answers "which runs need the prior?"."""
        return {m: self.sft.rule or resolve_method(m) for m in self.pipeline.methods}

    def for_run(self, method: str, seed: int) -> RunConfig:
        """The config one run of the sweep trains and records in its config.yaml: `sft.method` and the
        seeds are the run's (under `prift run`, `pipeline.methods` decides; `sft.method` is what
        `prift sft` trains)."""
        return dataclasses.replace(
            self, sft=dataclasses.replace(self.sft, method=method, seed=seed),
            rl=dataclasses.replace(self.rl, seed=seed)
        )


def from_dict(cls, data, path: str = ""):
    problems: list[str] = []
    value = _build(cls, data, path, problems)
    if problems:
        raise ConfigError(problems)
    return value


def _default(f: dataclasses.Field, base):
    """What field f is when YAML leaves it out: its value in `base` (the enclosing section's default)
    when there is one, else the field's own default (None when it has none)."""
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _build(cls, data, path, problems, base=None):
    """The dataclass for `data`, or None with its problems appended. The section is built even when
    some of its fields have the wrong type, so its own checks (`__post_init__`) still report the
    other fields' range and name problems.

    A section given in part overlays the default of the field that holds it (`base`): the keys
    given replace those fields, the others keep that default's values, at every depth. So
    `rl.sandbox: {memory_mb: 512}` keeps the RL stage's 5 s limits, not SandboxConfig's 10 s."""
    if not isinstance(data, dict):
        problems.append(f"{path or '<root>'}: got {data!r}, expected a mapping for {cls.__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    before = len(problems)
    for key in data:
        if key not in names:
            problems.append(f"{_join(path, key)}: unknown key (expected one of: {', '.join(sorted(names))})")
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    problems += [f"{_join(path, name)}: missing (required)" for name in required if name not in data]
    kwargs = {f.name: _check(hints[f.name], data[f.name], _join(path, f.name), problems, _default(f, base))
              for f in fields if f.name in data}
    if base is None and any(name not in data for name in required):
        return None
    typed = len(problems) == before
    try:
        value = cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
    except FieldErrors as e:
        problems += [_join(path, p) for p in e.problems]
        return None
    except (TypeError, ValueError, AttributeError) as e:
        if typed:  # otherwise a consequence of a wrong type already named
            problems.append(f"{path or '<root>'}: {e}")
        return None
    return value if len(problems) == before else None


def _check(tp, value, path, problems, default=None):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, problems, default if isinstance(default, tp) else None)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, path, problems, default) if len(inner) == 1 else value
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
    if tp is float and isinstance(value, str) and FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if tp in (str, int, float, bool) and (type(value) is not tp):
        problems.append(f"{path}: got {value!r}, expected {tp.__name__}")
    return value


FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_yaml(text: str, where: str, offset: int = 0):
    """`text` as YAML, or a ConfigError naming `where`, the line and the column (`offset` shifts the
    column of a one-line `--set` value to its place in the whole KEY=VALUE argument)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1 + offset}" if mark else "somewhere"
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{where}: not valid YAML at {at}: {what}"]) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=c` assignments (values parsed as YAML: 3 -> int, true -> bool, [x, y] -> list); every
    malformed one is reported."""
    problems = []
    for item in overrides:
        try:
            _override(data, item)
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems)
    return data


def _override(data: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError([f"--set {item}: expected KEY.PATH=VALUE"])
    key, raw = item.split("=", 1)
    value = parse_yaml(raw, f"--set {item}", offset=len(key) + 1)
    node = data
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError([f"--set {key}: {p} is not a mapping"])
    node[last] = value


def load_config(path: str | Path, overrides: list[str] = (), cls=RunConfig):
    """The config at `path` with `overrides` applied; one ConfigError names every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not a text file ({e.reason} at byte {e.start})"]) from None
    problems, data = [], {}
    try:
        data = parse_yaml(text, str(path)) or {}
    except ConfigError as e:
        problems += e.problems
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping of sections (model, data, sft, ...), got {type(data).__name__}")
        data = {}
    try:
        apply_overrides(data, list(overrides))
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    return from_dict(cls, data)
