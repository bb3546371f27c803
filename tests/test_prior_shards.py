"""The prior stage at scale: batched tokenization, Arrow shards, resume by shard, several workers."""

import json
import logging

import numpy as np
import pytest
import torch

from conftest import make_corpus
from prift.data import DataConfig, tokenize_rows
from common.models import load_causal_lm, load_tokenizer
from prift.prior import PriorConfig, ShardScorer, load_prior, run_prior


def per_row_reference(conversations, tokenizer, max_length):
    """The formatting rule written out one row at a time: chat-templated prompt, response + EOS,
    right truncation, rows with no response token left dropped."""
    out = []
    for i, (messages, response) in enumerate(conversations):
        prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=True, return_dict=False))
        resp = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids = (prompt + resp)[:max_length]
        if len(ids) > len(prompt):
            out.append((i, ids, [0] * len(prompt) + [1] * (len(ids) - len(prompt))))
    return out


def test_batched_tokenization_equals_per_row_on_the_shipped_tokenizer():
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert tokenizer.is_fast
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    conversations = [
        (user("What is 2+3?"), "2 plus 3 is 5."),
        (user(""), "An empty prompt still has a template."),
        ([{"role": "system", "content": "Be terse."}] + user("Name a prime."), "7"),
        (user("Übersetze: «naïve café» — 東京 🚀"), "Tokyo 東京, café ☕\n\n  indented\tline"),
        (user("first") + [{"role": "assistant", "content": "earlier answer"}] + user("second"), "the last turn"),
        (user("x " * 300), "dropped: the prompt fills max_length"),
        (user("Count."), " ".join(str(k) for k in range(200))),  # truncated response
        (user("spaces"), "   leading and trailing   "),
    ]
    rows = tokenize_rows(conversations, tokenizer, max_length=128)
    expected = per_row_reference(conversations, tokenizer, 128)
    assert [r["index"] for r in rows] == [i for i, _, _ in expected] == [0, 1, 2, 3, 4, 6, 7]
    for row, (_, ids, mask) in zip(rows, expected):
        assert row["input_ids"] == ids and row["response_mask"] == mask
    assert rows[5]["num_truncated"] > 0 and len(rows[5]["input_ids"]) == 128


def columns(folder):
    table = load_prior(folder)
    return {k: table[k] for k in ("index", "input_ids", "response_mask", "prior_logprob", "prior_mass")}


def assert_same_tables(a, b):
    assert a["index"] == b["index"] and a["input_ids"] == b["input_ids"] and a["response_mask"] == b["response_mask"]
    for k in ("prior_logprob", "prior_mass"):
        assert all(np.array_equal(x, y) for x, y in zip(a[k], b[k])), k  # bit for bit


@pytest.fixture
def corpus_file(tmp_path):
    rows = make_corpus(40)
    rows[13] = {"prompt": "x " * 200, "response": "dropped"}  # truncated away: shards hold 0..n rows
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_a_rerun_after_an_interruption_scores_only_the_missing_shards(tiny_model, corpus_file, tmp_path, monkeypatch):
    data, cfg = DataConfig(path=corpus_file, max_length=48), PriorConfig(shard_rows=6, batch_tokens=100)
    whole = run_prior(tiny_model, data, cfg, tmp_path / "whole")  # 40 rows: 7 shards

    real = ShardScorer.score_shard
    calls = []

    def interrupted_after_3(self, conversations, start, path):
        if len(calls) == 3:
            path.with_name(path.name + ".tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves
            raise KeyboardInterrupt
        calls.append(start)
        real(self, conversations, start, path)

    monkeypatch.setattr(ShardScorer, "score_shard", interrupted_after_3)
    with pytest.raises(KeyboardInterrupt):
        run_prior(tiny_model, data, cfg, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / whole.name).exists()  # nothing counts as done
    assert len(list((tmp_path / "resumed" / f"{whole.name}.partial" / "data").glob("*.arrow"))) == 3

    rerun = []
    monkeypatch.setattr(ShardScorer, "score_shard",
                        lambda self, c, start, p: (rerun.append(start), real(self, c, start, p)))
    resumed = run_prior(tiny_model, data, cfg, tmp_path / "resumed")
    assert sorted(rerun) == [18, 24, 30, 36] and calls == [0, 6, 12]
    assert not list(resumed.glob("data/*.tmp")) and not resumed.with_name(f"{whole.name}.partial").exists()
    assert_same_tables(columns(resumed), columns(whole))
    assert json.loads((resumed / "meta.json").read_text()) == json.loads((whole / "meta.json").read_text())
    assert columns(whole)["index"] == [i for i in range(40) if i != 13]


@pytest.mark.slow  # two spawned processes each import torch and transformers: ~40 s on 2 busy cores
def test_two_worker_processes_store_what_one_does_and_match_a_float64_forward(tiny_model,
                                                                              corpus_file, tmp_path, caplog):
    data = DataConfig(path=corpus_file, max_length=48)
    one = run_prior(tiny_model, data, PriorConfig(shard_rows=7, batch_tokens=120, workers=1), tmp_path / "one")
    with caplog.at_level(logging.INFO, logger="prift.prior"):
        two = run_prior(tiny_model, data, PriorConfig(shard_rows=7, batch_tokens=120, workers=2), tmp_path / "two")
    assert "2 workers" in caplog.text
    assert one.name == two.name  # the worker count is not part of the cache key
    a, b = columns(one), columns(two)
    assert_same_tables(a, b)

    model = load_causal_lm(tiny_model).double().eval()
    for ids, mask, lp in zip(a["input_ids"][:6], a["response_mask"][:6], a["prior_logprob"][:6]):
        with torch.no_grad():
            logq = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
        want = logq.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
        resp = torch.tensor(mask[1:], dtype=torch.bool)
        torch.testing.assert_close(torch.tensor(lp[1:], dtype=torch.float64)[resp], want[resp], atol=1e-5, rtol=1e-5)


def test_stored_shards_are_memory_mapped_and_a_stale_shard_of_another_size_is_dropped(tiny_model, corpus_file,
                                                                                      tmp_path):
    data = DataConfig(path=corpus_file, max_length=48)
    folder = run_prior(tiny_model, data, PriorConfig(shard_rows=16), tmp_path / "p")
    table = load_prior(folder)
    assert len(table.cache_files) == 3 and all("/data/shard-" in f["filename"] for f in table.cache_files)
    assert table.features["input_ids"].feature.dtype == "int32"
    assert table.features["prior_mass"].feature.dtype == "float32"

    # a partial folder written with shard_rows=16, resumed with shard_rows=10: no old shard is reused
    key = folder.name
    (tmp_path / "p" / key).rename(tmp_path / "p" / f"{key}.partial")
    (tmp_path / "p" / f"{key}.partial" / "meta.json").unlink()
    again = run_prior(tiny_model, data, PriorConfig(shard_rows=10), tmp_path / "p")
    names = sorted(f.name for f in (again / "data").glob("*.arrow"))
    assert names == [f"shard-{s:010d}-{s + 10:010d}.arrow" for s in (0, 10, 20, 30)]
    assert load_prior(again)["index"] == [i for i in range(40) if i != 13]


def test_a_cache_of_another_format_is_rescored_never_read(tiny_model, sft_file, tmp_path, monkeypatch, caplog):
    """The format is in the cache key: a format-2 cache (no entropy columns) is not found by format 3,
    which scores anew; a format-2 folder handed to load_prior by path is refused, naming the columns."""
    import pyarrow as pa

    import prift.prior as prior_mod
    from common.errors import InputError

    data, cfg = DataConfig(path=sft_file, max_length=64), PriorConfig(precision="fp32")
    monkeypatch.setattr(prior_mod, "CACHE_FORMAT", 2)
    monkeypatch.setattr(prior_mod, "SIGNAL_COLUMNS", ("prior_logprob", "prior_mass"))
    monkeypatch.setattr(prior_mod, "SCHEMA", pa.schema([f for f in prior_mod.SCHEMA if "entropy" not in f.name]))
    monkeypatch.setattr(prior_mod, "STORED_SIGNALS", ("logprob", "mass"))
    monkeypatch.setattr("prift.reference.STORED_SIGNALS", ("logprob", "mass"))
    old = run_prior(tiny_model, data, cfg, tmp_path)
    monkeypatch.undo()
    with pytest.raises(InputError, match="prior_entropy"):
        load_prior(old)
    with caplog.at_level(logging.INFO, logger="prift.prior"):
        new = run_prior(tiny_model, data, cfg, tmp_path)
    assert new != old and "cache hit" not in caplog.text
    table = load_prior(new)
    assert {"prior_entropy", "prior_entropy_top"} <= set(table.column_names)
    assert json.loads((new / "meta.json").read_text())["format"] == 3
