"""RL prompts: training splits of known tasks and seeded reasoning-gym generators, never eval data.

Rows are built with the eval tasks' own normalisers and prompt templates, so a math prompt asks for
a `\\boxed{}` answer exactly as the evaluation does, and its `scorer` column says which reward
scores it. Before anything trains, every prompt's normalised text is hashed and compared with every
row (not only the evaluated subset) of each evaluation task; any overlap is refused, naming it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field

from common.checks import at_least, require, seed
from common.errors import FieldErrors
from evals.tasks import MATH_PROMPT, TASKS, Example, TaskError, TaskSpec, load_examples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratorSpec:
    """A reasoning-gym dataset: unlimited seeded prompts with exact answers (scored by the strict math scorer)."""

    name: str = "basic_arithmetic"
    """A reasoning-gym dataset name (basic_arithmetic, chain_sum, gsm_symbolic, simple_equations, ...)."""
    size: int = 256
    """How many prompts to generate."""
    seed: int = 0
    """Generator seed: the same seed gives the same prompts."""
    options: dict = field(default_factory=dict)
    """The generator's own settings, e.g. basic_arithmetic {min_terms: 2, max_terms: 2, max_digits: 1,
    operators: ["+"]} (reasoning-gym's dataset config; unknown keys are refused by it)."""

    def __post_init__(self):
        require(at_least("size", self.size, 1), seed("seed", self.seed))


@dataclass(frozen=True)
class PromptsConfig:
    tasks: list[TaskSpec] = field(default_factory=list)
    """Training splits of known tasks, e.g. {name: gsm8k, source: openai/gsm8k, split: train}."""
    generators: list[GeneratorSpec] = field(default_factory=lambda: [GeneratorSpec()])
    """reasoning-gym generators (the CPU default: 256 basic_arithmetic prompts)."""
    template: str = MATH_PROMPT
    """How a generated problem becomes a prompt ({problem} is replaced); default: the math
    evaluation's own template, which asks for step-by-step reasoning and a \\boxed{} answer."""

    def __post_init__(self):
        if "{problem}" not in self.template:
            raise FieldErrors([f"template: must contain {{problem}}, got {self.template!r}"])


def _generated(spec: GeneratorSpec, template: str) -> list[Example]:
    import reasoning_gym

    options = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.options.items()}
    try:
        data = reasoning_gym.create_dataset(spec.name, size=spec.size, seed=spec.seed, **options)
    except Exception as e:  # reasoning-gym raises assorted errors for unknown names / bad args
        raise TaskError(f"rl.prompts.generators: reasoning-gym dataset {spec.name!r}: {e}") from None
    return [
        Example(f"{spec.name}/{spec.seed}/{i}", template.replace("{problem}", row["question"]), str(row["answer"]))
        for i, row in enumerate(data)
    ]


def build_rows(cfg: PromptsConfig) -> list[dict]:
    """Chat-format rows with the columns the rewards read: answer, scorer, letters, code."""
    rows = []
    for spec in cfg.tasks:
        scorer = TASKS[spec.name].scorer
        rows += [_row(ex, scorer) for ex in load_examples(spec)]
    for gen in cfg.generators:
        rows += [_row(ex, "math") for ex in _generated(gen, cfg.template)]
    if not rows:
        raise TaskError("rl.prompts: no prompts (give tasks with training splits or reasoning-gym generators)")
    return rows


def _row(ex: Example, scorer: str) -> dict:
    code = {k: ex.meta[k] for k in ("prompt", "entry_point", "tests", "setup")} if scorer == "code" else None
    return {
        "prompt": [{"role": "user", "content": ex.prompt}], "answer": ex.gold, "scorer": scorer,
        "letters": ex.meta.get("letters", ""), "code": code, "id": ex.id,
    }


def prompt_hash(text: str) -> str:
    """Hash of a prompt's text with case and whitespace normalised."""
    return hashlib.sha256(re.sub(r"\s+", " ", text).strip().lower().encode()).hexdigest()


def check_no_eval_overlap(rows: list[dict], eval_tasks: list[TaskSpec]) -> None:
    """Refuse RL prompts that appear in any evaluation task (all its rows, whatever its limit)."""
    train = {prompt_hash(r["prompt"][-1]["content"]): r["id"] for r in rows}
    overlaps = []
    for spec in eval_tasks:
        full = TaskSpec(spec.name, spec.source, spec.split)
        overlaps += [(spec.name, ex.id, train[h])
                     for ex in load_examples(full) if (h := prompt_hash(ex.prompt)) in train]
    if overlaps:
        shown = "; ".join(f"{task} row {eid} = RL prompt {rid}" for task, eid, rid in overlaps[:5])
        raise TaskError(f"rl.prompts: {len(overlaps)} RL prompt(s) are evaluation prompts: {shown}")
    log.info("rl prompts: %d, none of them in the %d evaluation task(s)", len(rows), len(eval_tasks))
