"""RL prompts: training splits of known tasks and seeded reasoning-gym generators, never eval data.

Rows are built with the eval tasks' own normalisers and prompt templates, so a math prompt asks for
a `\\boxed{}` answer exactly as the evaluation does, and its `scorer` column names its answer kind
(evals/kinds.py), which says which reward scores it. Before anything trains, every prompt's
normalised text is hashed and compared with every row (not only the evaluated subset) of each
evaluation task; any overlap is refused, naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from common.checks import at_least, require, seed
from common.errors import FieldErrors
from evals.kinds import MATH, AnswerKind
from evals.tasks import (
    MATH_PROMPT, TASKS, Example, TaskError, TaskSpec, eval_overlaps, generate_problems, load_examples, problem_keys,
)

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
    rows = generate_problems(spec.name, spec.size, spec.seed, spec.options, "rl.prompts.generators")
    return [
        Example(f"{spec.name}/{spec.seed}/{i}", template.replace("{problem}", row["question"]), str(row["answer"]),
                {"problem": row["question"]})
        for i, row in enumerate(rows)
    ]


def build_rows(cfg: PromptsConfig) -> list[dict]:
    """Chat-format rows with the columns the rewards read: answer, scorer, letters, code."""
    rows = []
    for spec in cfg.tasks:
        kind = TASKS[spec.name].kind
        rows += [_row(ex, kind) for ex in load_examples(spec)]
    for gen in cfg.generators:
        rows += [_row(ex, MATH) for ex in _generated(gen, cfg.template)]
    if not rows:
        raise TaskError("rl.prompts: no prompts (give tasks with training splits or reasoning-gym generators)")
    return rows


def _row(ex: Example, kind: AnswerKind) -> dict:
    """The `scorer` column holds the kind's name (rewards read it back with `evals.kinds.kind_named`)."""
    return {
        "prompt": [{"role": "user", "content": ex.prompt}], "answer": ex.gold, "scorer": kind.name,
        "letters": ex.meta.get("letters", ""), "code": kind.reward_code(ex.meta), "id": ex.id,
        "problem": ex.meta.get("problem"),
    }


def check_no_eval_overlap(rows: list[dict], eval_tasks: list[TaskSpec]) -> None:
    """Refuse RL prompts that appear in any evaluation task (all its rows, whatever its limit), as a
    whole prompt or, for generated problems, as the bare question under another template."""
    train = {}
    for r in rows:
        train |= dict.fromkeys(problem_keys(r["prompt"][-1]["content"], r.get("problem")), r["id"])
    overlaps = eval_overlaps(train, eval_tasks)
    if overlaps:
        shown = "; ".join(f"{task} row {eid} = RL prompt {rid}" for task, eid, rid in overlaps[:5])
        raise TaskError(f"rl.prompts: {len(overlaps)} RL prompt(s) are evaluation prompts: {shown}")
    log.info("rl prompts: %d, none of them in the %d evaluation task(s)", len(rows), len(eval_tasks))
