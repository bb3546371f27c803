"""The comparison report: seed statistics, the KL drift, the token view (also rendered in Chromium)."""

import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tiny_model


def summary(gsm8k: float, medqa: float) -> dict:
    tasks = {t: {"avg_at_2": v, "pass_at_1": v,
                 "pass_at_2": min(1.0, 2 * v)} for t, v in (("gsm8k", gsm8k), ("medqa", medqa))}
    return {"tasks": tasks, "domains": {"math": tasks["gsm8k"], "medical": tasks["medqa"]}}


def test_table_gives_mean_and_sample_std_over_seeds(tmp_path):
    from workflows.report.collect import Run
    from workflows.report.tables import markdown_table, method_table

    runs = [Run(tmp_path, "prift_mass", s, {},
                {"sft": summary(g, m)}) for s, (g, m) in enumerate([(0.2, 0.5), (0.4, 0.5), (0.9, 0.2)])]
    runs.append(Run(tmp_path, "sft", 0, {}, {"sft": summary(0.1, 0.3)}))
    rows = method_table(runs, summary(0.05, 0.25), "tasks")
    mean, std, seeds = rows["prift_mass (sft)"]["gsm8k"]["avg_at_2"]
    expected_mean = (0.2 + 0.4 + 0.9) / 3
    assert mean == pytest.approx(expected_mean) and seeds == 3
    assert std == pytest.approx(math.sqrt(sum((x - expected_mean) ** 2 for x in (0.2, 0.4, 0.9)) / 2))
    assert rows["sft (sft)"]["gsm8k"]["avg_at_2"] == (0.1, None, 1)  # one seed: no spread claimed
    assert list(rows) == ["base", "prift_mass (sft)", "sft (sft)"]
    table = markdown_table(rows, "avg_at_n")
    assert "| prift_mass (sft) | 50.0 ± 36.1 | 40.0 ± 17.3 |" in table and "| base | 5.0 | 25.0 |" in table


def reference_kl(model_a, model_b, ids: list[int]) -> float:
    """Float64 numpy, position by position: sum_v p_a log(p_a / p_b), averaged over positions."""
    with torch.no_grad():
        la = model_a(input_ids=torch.tensor([ids])).logits[0, :-1].double().numpy()
        lb = model_b(input_ids=torch.tensor([ids])).logits[0, :-1].double().numpy()
    total = 0.0
    for a, b in zip(la, lb):
        pa = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
        pb = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
        total += float(np.sum(pa * (np.log(pa) - np.log(pb))))
    return total / (len(ids) - 1)


def test_token_kl_is_zero_to_itself_and_matches_a_float64_reference(tiny_model, tmp_path):
    from common.models import load_causal_lm
    from workflows.report.drift import mean_token_kl, next_token_logits

    a = load_causal_lm(tiny_model).eval()
    b = load_causal_lm(build_tiny_model(tmp_path / "other", seed=1)).eval()
    seqs = [[5, 17, 42, 99, 7, 3], [11, 12, 13, 14]]

    def kl(model, base):
        return mean_token_kl(model, next_token_logits(base, seqs), seqs)

    assert kl(a, a) == 0.0
    expected = (reference_kl(a, b, seqs[0]) * 5 + reference_kl(a, b, seqs[1]) * 3) / 8
    assert kl(a, b) == pytest.approx(expected, rel=1e-9)
    assert kl(a, b) > 0 and kl(b, a) != pytest.approx(kl(a, b))


def test_drift_loads_each_model_once_and_reads_its_kl_from_beside_the_weights_after(tiny_model, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import common.models
    from common.models import load_causal_lm
    from workflows.report.drift import CACHE, drift, mean_token_kl, next_token_logits

    trained = build_tiny_model(tmp_path / "sft" / "final", seed=1)
    run = SimpleNamespace(method="prift_prob", seed=0, models=lambda: {"sft": Path(trained)})
    texts = {"general": [[5, 17, 42, 99, 7, 3], [11, 12, 13, 14]]}
    base = load_causal_lm(tiny_model).eval()
    expected = mean_token_kl(load_causal_lm(trained).eval(), next_token_logits(base, texts["general"]),
                             texts["general"])

    first = drift([run], tiny_model, texts)
    assert first == [{"method": "prift_prob", "stage": "sft", "seed": 0, "kl": {"general": pytest.approx(expected)}}]
    assert (Path(trained) / CACHE).exists()

    def no_loading(*a, **k):
        raise AssertionError("a cached model was loaded again")

    monkeypatch.setattr(common.models, "load_causal_lm", no_loading)
    assert drift([run], tiny_model, texts) == first  # the weights could be gone: the cache answers
    with pytest.raises(AssertionError, match="loaded again"):  # other texts: the cache does not hold them
        drift([run], tiny_model, {"general": texts["general"][:1]})


@pytest.fixture(scope="module")
def prior_cache(tiny_model, sft_file, tmp_path_factory):
    from prift.data import DataConfig
    from prift.prior import PriorConfig, run_prior

    return run_prior(tiny_model, DataConfig(path=sft_file, max_length=64), PriorConfig(),
                     tmp_path_factory.mktemp("prior"))


def test_token_view_shows_every_response_token_with_its_weight(prior_cache, tiny_model, tmp_path):
    from common.models import load_tokenizer
    from prift.prior import load_prior
    from workflows.report.token_view import token_view

    page = token_view(prior_cache, tmp_path / "tokens.html", examples=3).read_text()
    examples = re.findall(r'<div class="example">(.*?)</div>', page, flags=re.S)
    assert len(examples) == 3
    tokenizer, table = load_tokenizer(tiny_model), load_prior(prior_cache)
    picked = sorted(np.random.default_rng(0).choice(len(table), size=3, replace=False).tolist())
    for block, i in zip(examples, picked):
        row = table[i]
        response = [t for t, m in zip(row["input_ids"], row["response_mask"]) if m]
        spans = re.findall(r'<span class="(tok[^"]*)" style="[^"]*" title="([^"]*)">(.*?)</span>', block, flags=re.S)
        assert [html.unescape(text) for _, _, text in spans] == [tokenizer.decode([t]) for t in response]
        masses = [u for u, m in zip(row["prior_mass"], row["response_mask"]) if m]
        assert [("dropped" in cls) for cls, _, _ in spans] == [u < 0.5 for u in masses]
        assert all(html.unescape(tip).count("'") >= 2 * 5 for _, tip, _ in spans)  # five alternatives each
    assert "dft=" not in page  # no dft model given: no DFT weight claimed
    assert page.count('class="swatch"') == 11  # the colour legend, q = 0.0 .. 1.0


def test_token_view_states_the_share_dropped_and_the_dft_weight_of_each_token(prior_cache, tiny_model, tmp_path):
    from prift.prior import load_prior
    from workflows.report.token_view import token_view

    dft_model = build_tiny_model(tmp_path / "dft", seed=3)
    page = token_view(prior_cache, tmp_path / "tokens.html", examples=2, dft_model=dft_model).read_text()
    table = load_prior(prior_cache)
    picked = sorted(np.random.default_rng(0).choice(len(table), size=2, replace=False).tolist())
    captions = re.findall(r'<p class="caption">Example (\d+): (\d+) of (\d+) response tokens '
                          r'\((\d+)% dropped by PriFT-mass\)</p>', page)
    blocks = re.findall(r'<div class="example">(.*?)</div>', page, flags=re.S)
    from common.models import load_causal_lm

    model = load_causal_lm(dft_model).eval()
    for (number, dropped, total, share), block, i in zip(captions, blocks, picked, strict=True):
        row = table[i]
        response = [j for j, m in enumerate(row["response_mask"]) if m]
        expected = sum(row["prior_mass"][j] < 0.5 for j in response)
        assert (int(dropped), int(total)) == (expected, len(response))
        assert int(share) == round(100 * expected / len(response))
        # the DFT weight: the dft model's own p(token j | tokens < j), float64 numpy softmax as reference
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0].double().numpy()
        tips = re.findall(r'title="([^"]*)"', block)
        for j, tip in zip(response, tips, strict=True):
            z = logits[j - 1] - logits[j - 1].max()
            p = np.exp(z[row["input_ids"][j]]) / np.exp(z).sum()
            assert f"dft={p:.3f}" in html.unescape(tip)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: `make test` installs Debian's chromium package"
    return path


@pytest.mark.slow
def test_token_view_renders_in_headless_chromium(prior_cache, tmp_path):
    from PIL import Image

    from workflows.report.token_view import token_view

    page = token_view(prior_cache, tmp_path / "tokens.html", examples=3)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,800", f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.std() > 10  # not a blank page
    hues = pixels.reshape(-1, 3)
    greenish = ((hues[:, 1] - hues[:, 0] > 30) & (hues[:, 1] - hues[:, 2] > 30)).sum()
    reddish = ((hues[:, 0] - hues[:, 1] > 30) & (hues[:, 0] - hues[:, 2] > 30)).sum()
    assert greenish + reddish > 500  # the coloured token backgrounds were painted


def test_an_older_config_of_the_same_method_and_seed_is_not_averaged_in(tmp_path):
    import os

    import yaml

    from workflows.report.collect import collect

    for i, (name, value) in enumerate([("sft-m-s0-aaaa", 0.9), ("sft-m-s0-bbbb", 0.1)]):
        folder = tmp_path / name
        (folder / "eval" / "sft").mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": "m", "sft": {"method": "sft", "seed": 0}}))
        (folder / "manifest.json").write_text("{}")
        os.utime(folder / "manifest.json", (1000 + i, 1000 + i))
        (folder / "eval" / "sft" / "summary.json").write_text(json.dumps(summary(value, value)))
    runs, base = collect(tmp_path)
    assert [r.folder.name for r in runs] == ["sft-m-s0-bbbb"] and base is None


def test_drift_table_averages_the_seeds_of_each_method_and_stage():
    from workflows.report.tables import drift_table

    records = [{"method": "sft", "stage": "sft", "seed": s, "kl": {"general": v}} for s, v in ((0, 0.1), (1, 0.2))]
    records.append({"method": "dft", "stage": "rl", "seed": 0, "kl": {"general": 0.3}})
    table = drift_table(records)
    assert "| sft (sft) | 2 | 0.1500 ± 0.0707 |" in table and "| dft (rl) | 1 | 0.3000 |" in table


def test_pipeline_table_shows_strict_then_flexible_where_a_task_has_both():
    from workflows.pipeline import scores_table

    math = {"avg_at_2": 0.25, "avg_at_2_flexible": 0.5, "num_problems": 40, "num_samples": 2}
    medical = {"avg_at_2": 0.75}
    base = {"status": "done", "models": {"base": {"gsm8k": math, "medqa": medical}}}
    table = scores_table({"base": base, "runs": {}}, ["gsm8k", "medqa"])
    assert "strict (primary) / flexible" in table.splitlines()[0]
    assert "(n = problems x samples)" in table.splitlines()[0]
    assert table.splitlines()[2].split("|")[1:] == ["        n=40x2 ", "              "]  # what each column rests on
    assert table.splitlines()[-1].split("|")[1:] == ["   25.0 / 50.0 ", "          75.0"]


def test_each_methods_histogram_weights_are_its_rule_applied_to_the_stored_signals(prior_cache, tiny_model):
    from types import SimpleNamespace

    from prift.prior import load_prior
    from workflows.report.token_view import method_weights

    runs = [SimpleNamespace(method=m, weights=lambda stage: tiny_model if stage == "sft" else None)
            for m in ("sft", "prift_prob", "prift_mass", "dft")]
    weights = method_weights(prior_cache, runs, rows=5)
    table = load_prior(prior_cache).select(range(5))
    lp = np.concatenate([np.asarray(r["prior_logprob"])[np.asarray(r["response_mask"], bool)] for r in table])
    u = np.concatenate([np.asarray(r["prior_mass"])[np.asarray(r["response_mask"], bool)] for r in table])
    np.testing.assert_array_equal(weights["sft"], np.ones_like(lp))
    np.testing.assert_allclose(weights["prift_prob"], np.exp(lp.astype(np.float64)), rtol=1e-6)
    np.testing.assert_array_equal(weights["prift_mass"], (u >= 0.5).astype(np.float32))
    # dft's model here is the base itself, so its own probability equals the prior's q
    np.testing.assert_allclose(weights["dft"], np.exp(lp.astype(np.float64)), rtol=1e-4, atol=1e-7)


def test_a_checkpoint_without_its_weights_counts_as_a_model_but_not_as_weights(tmp_path):
    """A sweep's results kept without the weights (docs/study_cpu/results.tar.gz) still list the
    checkpoint (its scores and cached drift stand), but nothing tries to load it."""
    from workflows.report.collect import Run

    final = tmp_path / "sft" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    run = Run(folder=tmp_path, method="dft", seed=0, config={})
    assert run.models() == {"sft": final} and run.weights("sft") is None and run.weights("rl") is None
    (final / "model.safetensors").write_bytes(b"")
    assert run.weights("sft") == final


@pytest.mark.parametrize("samples,columns", [(1, 6), (4, 9)])
def test_sft_to_rl_table_shows_pass_at_n_only_where_it_differs_from_avg(samples, columns):
    """With one sample per problem, Pass@n is Avg@n: the table must not print each number twice."""
    from workflows.report.stats import Interval
    from workflows.report.tables import RLChange, rl_change_tables

    level, delta = Interval(0.2, 0.1, 0.3), Interval(0.05, 0.01, 0.09, detectable=0.08)
    change = RLChange("sft", "t", [0], False, {"avg": level, "pass_at_n": level}, {"avg": level, "pass_at_n": level},
                      {"avg": delta, "pass_at_n": delta})
    lines = rl_change_tables([change], {"t": (50, samples)})
    header, row = lines[3], lines[5]
    assert header.count("|") - 1 == len(row.strip("|").split("|")) == columns
    assert ("Pass@n" in header) == (samples > 1) and "+5.0 [+1.0, +9.0]" in row and "±8.0" in row
