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
    skip_eval_problems: bool = False
    """Generated prompts only: drop those whose bare question is an evaluation problem and generate on
    until each generator has its `size`, instead of refusing the run. For generators with few distinct
    questions (one-digit sums with signs and brackets: about 2,000), where no seed keeps RL and
    evaluation apart. The evaluation set stays held out: RL never sees its questions. The number
    skipped is logged."""

    def __post_init__(self):
        if "{problem}" not in self.template:
            raise FieldErrors([f"template: must contain {{problem}}, got {self.template!r}"])


def _generated(spec: GeneratorSpec, template: str, held_out: list[TaskSpec]) -> list[Example]:
    """`spec.size` prompts of the generator; with `held_out` tasks, the first `spec.size` whose
    question is in none of them (generating 2x, 4x, ... as many until enough are left)."""
    size = spec.size
    while True:
        rows = generate_problems(spec.name, size, spec.seed, spec.options, "rl.prompts.generators")
        examples = [Example(f"{spec.name}/{spec.seed}/{i}", template.replace("{problem}", row["question"]),
                            str(row["answer"]), {"problem": row["question"]}) for i, row in enumerate(rows)]
        if not held_out:
            return examples
        keys = {ex.id: problem_keys(ex.prompt, ex.meta["problem"]) for ex in examples}
        hits = {rid for _, _, rid in eval_overlaps({k: i for i, ks in keys.items() for k in ks}, held_out)}
        taken = set().union(*(keys[i] for i in hits))  # a question drawn twice: every copy goes
        kept = [ex for ex in examples if not keys[ex.id] & taken]
        if len(kept) >= spec.size:
            log.info("rl.prompts: %s seed %d: %d of %d drawn prompt(s) are evaluation problems, skipped",
                     spec.name, spec.seed, len(examples) - len(kept), len(examples))
            return kept[:spec.size]
        if size >= MAX_GENERATED_FACTOR * spec.size:
            raise TaskError(f"rl.prompts.generators: {spec.name} (seed {spec.seed}, options {spec.options}) gives "
                            f"only {len(kept)} prompt(s) outside the evaluation tasks in {size} draws; expected "
                            f"size {spec.size}: lower the size or widen the generator's options")
        size *= 2


MAX_GENERATED_FACTOR = 16  # a generator this short of fresh questions has too few of them for `size`


def build_rows(cfg: PromptsConfig, eval_tasks: list[TaskSpec] = ()) -> list[dict]:
    """Chat-format rows with the columns the rewards read: answer, scorer, letters, code. With
    `skip_eval_problems`, generated prompts that are problems of `eval_tasks` are left out."""
    rows = []
    for spec in cfg.tasks:
        kind = TASKS[spec.name].kind
        rows += [_row(ex, kind) for ex in load_examples(spec)]
    held_out = list(eval_tasks) if cfg.skip_eval_problems else []
    for gen in cfg.generators:
        rows += [_row(ex, MATH) for ex in _generated(gen, cfg.template, held_out)]
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
