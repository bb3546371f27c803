"""Benchmarks load from the installed packages, hub-schema rows normalise, bad rows are named."""

import json
import re

import pytest

from evals.tasks import EVAL_GENERATOR_SEED, MATH_PROMPT, TaskError, TaskSpec, load_examples

PACKAGED_SIZES = {
    "gsm8k": 100, "math500": 311, "aime24": 30, "aime25": 15, "humaneval": 164,
    "medqa": 1273, "medmcqa": 4183, "pubmedqa": 500, "mmlu_medical": 1089,
}


@pytest.mark.parametrize("name,size", sorted(PACKAGED_SIZES.items()))
def test_packaged_tasks_load_in_full(name, size):
    examples = load_examples(TaskSpec(name))
    assert len(examples) == size
    assert all(e.prompt and e.gold for e in examples if name != "humaneval")


def test_math_prompt_asks_for_a_boxed_answer_and_choices_list_options():
    assert load_examples(TaskSpec("math500", limit=1))[0].prompt.endswith("within \\boxed{}.")
    medqa = load_examples(TaskSpec("medqa", limit=1))[0]
    assert "\nA. " in medqa.prompt and "\nE. " in medqa.prompt and medqa.meta["letters"] == "ABCDE"


def test_seeded_subset_is_reproducible_and_differs_from_the_head():
    a = load_examples(TaskSpec("medqa", limit=10, seed=3))
    b = load_examples(TaskSpec("medqa", limit=10, seed=3))
    head = load_examples(TaskSpec("medqa", limit=10))
    assert [e.id for e in a] == [e.id for e in b] != [e.id for e in head]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_hub_schemas_normalise_like_the_packaged_ones(tmp_path):
    medmcqa = write_jsonl(tmp_path / "m.jsonl",
                          [{"question": "Q?", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": 2}])
    gsm = write_jsonl(tmp_path / "g.jsonl", [{"question": "2+2?", "answer": "2+2=4\n#### 1,004"}])
    mmlu = write_jsonl(tmp_path / "u.jsonl", [
        {"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 3, "subject": "anatomy"},
        {"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 0, "subject": "astronomy"},
    ])
    pubmed = write_jsonl(tmp_path / "p.jsonl",
                         [{"question": "Q?", "context": {"contexts": ["c1", "c2"]}, "final_decision": "Maybe"}])
    assert load_examples(TaskSpec("medmcqa", source=medmcqa))[0].gold == "C"
    assert load_examples(TaskSpec("gsm8k", source=gsm))[0].gold == "1004"
    assert [e.gold for e in load_examples(TaskSpec("mmlu_medical", source=mmlu))] == ["D"]  # astronomy dropped
    ex = load_examples(TaskSpec("pubmedqa", source=pubmed))[0]
    assert ex.gold == "maybe" and "c1\nc2" in ex.prompt


def test_mbpp_rows_become_sandbox_programs(tmp_path):
    row = {"task_id": 2, "text": "Write a function to add.", "code": "def add(a, b):\n    return a + b",
           "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": ""}
    ex = load_examples(TaskSpec("mbpp", source=write_jsonl(tmp_path / "mbpp.jsonl", [row])))[0]
    assert ex.meta["entry_point"] == "add" and "assert add(0, 0) == 0" in ex.meta["test"]


def test_a_bad_row_is_named_with_its_field(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"question": "Q", "options": "A. x\nB. y", "answer": "A. x"},
        {"question": "Q", "options": "A. x\nB. y", "answer": "F. nope"},
    ])
    with pytest.raises(TaskError, match=r"medqa: row 1 .*answer 'F' is not one of the options AB"):
        load_examples(TaskSpec("medqa", source=bad))
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"query": "2+2"}])
    with pytest.raises(TaskError, match=r"row 0 .*expected one of the fields question, problem, prompt"):
        load_examples(TaskSpec("gsm8k", source=missing))
    with pytest.raises(TaskError, match="does not exist"):
        load_examples(TaskSpec("gsm8k", source=str(tmp_path / "nope.jsonl")))


def test_unknown_task_and_bad_limit_are_config_errors():
    with pytest.raises(ValueError, match="unknown task 'gsm9k'"):
        TaskSpec("gsm9k")
    with pytest.raises(ValueError, match="limit"):
        TaskSpec("gsm8k", limit=0)


def test_generated_tasks_are_seeded_sized_and_scored_by_the_generators_own_answers():
    import reasoning_gym

    options = {"min_terms": 2, "max_terms": 2, "max_digits": 2, "operators": ["+"]}
    spec = TaskSpec("rg_basic_arithmetic", limit=20, seed=7, options=options)
    examples = load_examples(spec)
    assert len(examples) == 20 and examples == load_examples(spec)
    other_seed = load_examples(TaskSpec("rg_basic_arithmetic", limit=20, seed=8, options=options))
    assert [e.gold for e in examples] != [e.gold for e in other_seed]
    direct = reasoning_gym.create_dataset("basic_arithmetic", size=20, seed=7, min_terms=2, max_terms=2, max_digits=2,
                                          operators=("+",))
    for ex in examples:
        row = direct[int(ex.id.rsplit("/", 1)[1])]  # the id is the problem's position in the generator's stream
        assert ex.meta["problem"] == row["question"] and ex.prompt.endswith("within \\boxed{}.")
        assert direct.score_answer(ex.gold, row) == 1.0  # reasoning-gym's own scorer takes our gold
        expression = row["question"].removeprefix("Calculate ").rstrip(".")
        assert re.fullmatch(r"[\d\s()+-]+", expression)
        assert int(ex.gold) == eval(expression)  # and the gold is Python's value of the sum itself
    assert len(load_examples(TaskSpec("rg_chain_sum"))) == 100  # the default size


def test_a_generated_task_holds_distinct_problems_first_come_from_the_stream_or_names_a_space_too_small():
    import reasoning_gym

    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"]}
    examples = load_examples(TaskSpec("rg_basic_arithmetic", limit=400, options=one_digit))
    stream = [row["question"] for row in reasoning_gym.create_dataset(
        "basic_arithmetic", size=4000, seed=EVAL_GENERATOR_SEED, min_terms=2, max_terms=2, min_digits=1,
        max_digits=1, operators=("+",))]
    assert len(set(stream[:400])) < 400  # the space is small: the raw stream repeats itself
    firsts = [i for i, q in enumerate(stream) if q not in stream[:i]][:400]
    assert [int(e.id.rsplit("/", 1)[1]) for e in examples] == firsts
    assert [e.meta["problem"] for e in examples] == [stream[i] for i in firsts]
    plain_sums = one_digit | {"allow_negation": False, "allow_parentheses": False}  # 100 sums, few phrasings
    with pytest.raises(TaskError, match=r"rg_basic_arithmetic: only \d+ distinct problems in 12800 drawn.*limit 200"):
        load_examples(TaskSpec("rg_basic_arithmetic", limit=200, options=plain_sums))


def test_generator_options_are_refused_where_they_mean_nothing_and_named_where_wrong():
    with pytest.raises(ValueError, match="options: only generated tasks"):
        TaskSpec("gsm8k", options={"max_digits": 2})
    with pytest.raises(TaskError, match=r"rg_chain_sum: reasoning-gym dataset 'chain_sum'.*no_such_option"):
        load_examples(TaskSpec("rg_chain_sum", limit=2, options={"no_such_option": 1}))
    with pytest.raises(ValueError, match="template: only generated tasks"):
        TaskSpec("gsm8k", template="{problem}")
    with pytest.raises(ValueError, match="template: must contain {problem}"):
        TaskSpec("rg_chain_sum", template="Add these.")


def test_a_generated_task_under_the_rl_template_is_the_rl_prompts_held_out_twin():
    from rl.prompts import GeneratorSpec, PromptsConfig, build_rows

    template = "{problem}\nAnswer with only the final answer within \\boxed{}."
    twin = load_examples(TaskSpec("rg_chain_sum", limit=5, seed=3, template=template))
    rows = build_rows(PromptsConfig(generators=[GeneratorSpec("chain_sum", size=5, seed=3)], template=template))
    assert [e.prompt for e in twin] == [r["prompt"][0]["content"] for r in rows]  # same prompt, same seed
    assert twin[0].prompt == twin[0].meta["problem"] + "\nAnswer with only the final answer within \\boxed{}."
    default = load_examples(TaskSpec("rg_chain_sum", limit=5, seed=3))
    assert default[0].prompt == MATH_PROMPT.format(problem=twin[0].meta["problem"])


def test_a_generated_eval_problem_that_is_an_rl_prompt_is_refused_under_any_template():
    from rl.prompts import GeneratorSpec, PromptsConfig, build_rows, check_no_eval_overlap

    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"]}
    rows = build_rows(PromptsConfig(generators=[GeneratorSpec(size=64, options=one_digit)],
                                    template="{problem}\nAnswer within \\boxed{}."))
    # one-digit sums (signs and brackets allowed) are ~2,000 questions: 50 from another seed repeat some of the 64
    refused = r"RL prompt\(s\) are evaluation prompts: rg_basic_arithmetic row basic_arithmetic/1000/"
    with pytest.raises(TaskError, match=refused):
        check_no_eval_overlap(rows, [TaskSpec("rg_basic_arithmetic", limit=50, options=one_digit)])
    check_no_eval_overlap(rows, [TaskSpec("rg_simple_equations", limit=50)])  # another family: fine


def test_skip_eval_problems_keeps_the_size_and_leaves_every_evaluation_question_out():
    from rl.prompts import GeneratorSpec, PromptsConfig, build_rows, check_no_eval_overlap

    one_digit = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"]}
    held_out = [TaskSpec("rg_basic_arithmetic", limit=50, options=one_digit)]
    cfg = PromptsConfig(generators=[GeneratorSpec(size=64, options=one_digit)], skip_eval_problems=True)
    rows = build_rows(cfg, held_out)
    check_no_eval_overlap(rows, held_out)  # refused above without the skip
    eval_questions = {ex.meta["problem"] for ex in load_examples(held_out[0])}
    plain = build_rows(PromptsConfig(generators=[GeneratorSpec(size=64, options=one_digit)]))
    assert len(rows) == 64 and not {r["problem"] for r in rows} & eval_questions
    # the same draws in the same order, with the evaluation's questions taken out
    expected = [r["problem"] for r in plain if r["problem"] not in eval_questions]
    assert [r["problem"] for r in rows][:len(expected)] == expected
    with pytest.raises(TaskError, match=r"gives only \d+ prompt\(s\) outside the evaluation tasks"):
        # without signs and brackets there are 100 one-digit sums (121 questions with the phrasings): an
        # evaluation of all of them leaves RL nothing
        plain_sums = one_digit | {"allow_negation": False, "allow_parentheses": False}
        build_rows(PromptsConfig(generators=[GeneratorSpec(size=8, options=plain_sums)], skip_eval_problems=True),
                   [TaskSpec("rg_basic_arithmetic", limit=121, options=plain_sums)])
