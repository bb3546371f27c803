"""The report on a synthetic 2-seed sweep (run folders written by hand, no training): the GRPO
curves against the logged history, the SFT -> RL table, the findings, the per-method colours and
the parent-run MLflow metrics."""

import json
import math

import numpy as np
import pytest
import yaml

from evals.metrics import task_metrics

PROBLEMS, SAMPLES = 30, 2
# problem p is solved by sample 0 when p < solved, by sample 1 when p < solved + 3
SOLVED = {("sft", 0, "sft"): 9, ("sft", 1, "sft"): 9, ("sft", 0, "rl"): 15, ("sft", 1, "rl"): 9,
          ("prift_mass", 0, "sft"): 21, ("prift_mass", 1, "sft"): 21,
          ("prift_mass", 0, "rl"): 24, ("prift_mass", 1, "rl"): 24}
NO_SIGNAL = {("sft", 1)}  # its RL had nothing to learn from: weights unchanged, scores as its SFT model
LOGS = {("sft", 0): [(1, 0.10, 20.0), (2, 0.30, 18.0), (3, 0.50, 16.0)],
        ("sft", 1): [(1, 0.0, 32.0), (2, 0.0, 32.0), (3, 0.0, 32.0)],
        ("prift_mass", 0): [(1, 0.40, 24.0), (2, 0.50, 22.0), (3, 0.70, 20.0)],
        ("prift_mass", 1): [(1, 0.60, 26.0), (2, 0.70, 20.0), (3, 0.90, 18.0)]}  # (step, reward, mean length)


def sft_curve(method: str, seed: int) -> dict[int, float]:
    """The held-out NLL logged during SFT (sft.heldout_every = 4): plain SFT turns up after step 4."""
    return {4: 1.2 + 0.1 * seed, 8: 1.5 + 0.1 * seed} if method == "sft" else {4: 1.1 + 0.1 * seed, 8: 1.0 + 0.1 * seed}


def scores(solved: int) -> list[list[float]]:
    return [[float(p < solved), float(p < solved + 3)] for p in range(PROBLEMS)]


def entropy(problem: int, sample: int, score: float) -> float | None:
    """Right samples were written surely (0.5 nats a token), wrong ones unsurely (2.0); the last
    problem's second sample is empty, so it has no entropy (left out, not counted as 0)."""
    if (problem, sample) == (PROBLEMS - 1, 1):
        return None
    return 0.5 if score else 2.0


def heldout(method: str, seed: int, stage: str) -> float:
    """The held-out SFT loss written for a model: higher for plain SFT, for seed 1 and after RL."""
    return 1.0 + 0.5 * (method == "sft") + 0.2 * seed + 0.1 * (stage == "rl")


def write_eval(folder, table: list[list[float]], heldout_nll: float | None = None):
    (folder / "gsm8k").mkdir(parents=True)
    rows = [{"id": f"gsm8k-{p:03d}", "sample": i, "score": s, "extracted": "gold" if s else f"wrong-{i}",
             "mean_token_entropy": entropy(p, i, s)}
            for p, row in enumerate(table) for i, s in enumerate(row)]  # each wrong sample states its own answer
    (folder / "gsm8k" / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    metrics = task_metrics(table)
    summary = {"tasks": {"gsm8k": metrics}, "domains": {"math": metrics}}
    if heldout_nll is not None:
        summary["heldout"] = {"heldout_nll": heldout_nll, "heldout_tokens": 640}
    (folder / "summary.json").write_text(json.dumps(summary))


def build_sweep(root, model: str, tracker=None):
    sweep = root / "tiny"
    (sweep / "base").mkdir(parents=True)
    (sweep / "base" / "manifest.json").write_text("{}")
    write_eval(sweep / "base" / "eval" / "base", scores(0))
    for method, seed in LOGS:
        folder = sweep / f"{method}-tiny-s{seed}-abcd1234"
        config = {"model": model, "sft": {"method": method, "seed": seed}, "rl": {"beta": 0.0}, "eval": {"tasks": []},
                  "pipeline": {"methods": ["sft", "prift_mass"], "seeds": [0, 1]}}
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        parent = tracker.run(None, f"{method} · seed {seed}", {"method": method}) if tracker else None
        manifest = {"status": "done", "mlflow_run_id": parent,
                    "stages": {s: {"status": "done"} for s in ("sft", "rl", "eval_sft", "eval_rl")}}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        for stage in ("sft", "rl"):
            write_eval(folder / "eval" / stage, scores(SOLVED[(method, seed, stage)]), heldout(method, seed, stage))
        (folder / "sft" / "final").mkdir(parents=True)
        (folder / "sft" / "heldout_curve.json").write_text(json.dumps({str(k): v for k, v in sft_curve(method,
                                                                                                       seed).items()}))
        (folder / "sft" / "final" / "prift_sft.json").write_text(json.dumps(
            {"log_history": [{"step": s, "loss": 2.0 / s} for s in (4, 8)]}))
        history = [{"step": s, "reward": r, "completions/mean_length": n, "loss": 0.0,
                    "frac_reward_zero_std": 1.0 if r == 0 else 0.5} for s, r, n in LOGS[(method, seed)]]
        (folder / "rl" / "final").mkdir(parents=True)
        (folder / "rl" / "final" / "prift_rl.json").write_text(json.dumps(
            {"learning_signal": {"weights_changed": (method, seed) not in NO_SIGNAL}, "log_history": history}))
        state = folder / "rl" / "checkpoints" / "checkpoint-3"
        state.mkdir(parents=True)
        (state / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return sweep


@pytest.fixture(scope="module")
def report(tiny_model, tmp_path_factory):
    """write_report on the synthetic sweep, with its parent runs in a sqlite MLflow store."""
    import os

    from workflows.report import write_report
    from workflows.tracking import Tracker, tracking_uri

    root = tmp_path_factory.mktemp("store")
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        tracker = Tracker(tracking_uri(root), "tiny")
        sweep = build_sweep(root, tiny_model, tracker)
        text = write_report(sweep, kl_texts=1, kl_max_tokens=8).read_text()
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return sweep, text, tracker


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    block = text.split(heading + "\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in block[2:]]
    return {row[0]: row[1:] for row in cells}


def avg(solved: int) -> float:
    return 100 * (solved + (solved + 3)) / (2 * PROBLEMS)


def test_rl_curves_are_the_logged_mean_and_std_and_flag_runs_without_signal(report):
    from workflows.report.collect import RL_CURVES, collect, rl_history
    from workflows.report.figures import method_colour, curves_figure

    sweep, text, _ = report
    assert (sweep / "report" / "rl_curves.png").stat().st_size > 5000
    runs, _ = collect(sweep)
    per_method = {}
    for r in runs:
        history, source = rl_history(r, None)
        assert source == "rl/final/prift_rl.json" and "kl" not in history
        entry = per_method.setdefault(r.method, {"ok": [], "flagged": []})
        entry["flagged" if r.rl_without_signal else "ok"].append((r.seed, history) if r.rl_without_signal else history)
    fig = curves_figure(per_method, RL_CURVES, 0.0)
    reward, kl, length = fig.axes
    lines = {line.get_label(): line for line in reward.get_lines()}
    mass = lines["prift_mass (2 seeds)"]
    assert list(mass.get_xdata()) == [1, 2, 3]
    assert list(mass.get_ydata()) == pytest.approx([0.5, 0.6, 0.8])  # (0.4 + 0.6) / 2, ...
    band = reward.collections[0].get_paths()[0].vertices[:, 1]  # mean ± sample std, std = |a - b| / sqrt(2)
    assert band.max() == pytest.approx(0.8 + 0.2 / math.sqrt(2))
    assert band.min() == pytest.approx(0.5 - 0.2 / math.sqrt(2))
    assert list(lines["sft (1 seed)"].get_ydata()) == pytest.approx([0.1, 0.3, 0.5])  # seed 1 not averaged in
    flagged = lines["sft seed 1: no learning signal"]
    assert flagged.get_linestyle() == "--" and list(flagged.get_ydata()) == [0.0, 0.0, 0.0]
    length_mass = {line.get_label(): line for line in length.get_lines()}["prift_mass (2 seeds)"]
    assert list(length_mass.get_ydata()) == pytest.approx([25.0, 21.0, 19.0])
    assert mass.get_color() == method_colour("prift_mass") and length_mass.get_color() == method_colour("prift_mass")
    assert "rl.beta = 0" in kl.texts[0].get_text() and not kl.get_lines()
    assert "KL to the SFT start is not logged: rl.beta is 0" in text


def test_sft_to_rl_table_pairs_seeds_and_keeps_runs_without_signal_apart(report):
    _, text, _ = report
    rows = table_rows(text, "### SFT -> RL on gsm8k: 30 problems × 2 samples per model and seed")
    # seeds paired: prift_mass 21 -> 24 solved on both seeds; sft seed 0 9 -> 15; sft seed 1 has no signal
    mass, sft, flagged = rows["prift_mass"], rows["sft"], rows["sft, seed 1 (no learning signal: shown, not averaged)"]
    assert mass[0] == "0, 1" and sft[0] == "0" and flagged[0] == "1"
    assert mass[1].startswith(f"{avg(21):.1f} [") and mass[2].startswith(f"{avg(24):.1f} [")
    assert mass[3].startswith(f"{avg(24) - avg(21):+.1f} [") and sft[3].startswith(f"{avg(15) - avg(9):+.1f} [")
    pass_n = 100 * (24 + 3) / PROBLEMS - 100 * (21 + 3) / PROBLEMS  # Pass@2: a problem either sample solves
    assert mass[7].startswith(f"{pass_n:+.1f} [")
    assert float(mass[4].lstrip("±")) > 0  # the change the test could detect, beside it
    assert flagged[3] == "+0.0 [+0.0, +0.0]"
    lo, hi = (float(v) for v in sft[3].split("[")[1].rstrip("]").split(","))
    assert 0 < lo < avg(15) - avg(9) < hi  # 6 of 30 problems gained on one seed: the interval excludes 0


def test_the_runs_table_gives_each_grpo_runs_share_of_steps_without_reward_variance(report):
    _, text, _ = report
    rows = table_rows(text, "## Runs")
    flat = {name: cells[1] for name, cells in rows.items() if name.startswith(("sft-", "prift_mass-"))}
    assert len(flat) == 4
    for name, share in flat.items():  # a reward of 0 in every group has no variance: sft seed 1's every step
        assert share == ("100%" if name.startswith("sft-") and "-s1-" in name else "0%"), name


def test_heldout_loss_table_is_the_mean_and_std_over_seeds_of_each_model(report):
    from workflows.report.tables import HELDOUT_NOTE

    _, text, _ = report
    block = text.split(HELDOUT_NOTE + "\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in block[2:])}
    for method in ("sft", "prift_mass"):
        values = [heldout(method, seed, "sft") for seed in (0, 1)]
        expected = f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"
        assert rows[f"{method} (sft)"] == ["2", "640", expected]
    assert "base" not in rows  # the base summary has no held-out loss: no row, not a zero


def test_the_sft_curve_section_gives_each_methods_heldout_nll_by_step_and_its_rise_from_the_lowest(report):
    sweep, text, _ = report
    block = text.split("### During SFT\n\n", 1)[1].split("\n\n", 2)[1].splitlines()
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in block[2:])}
    assert block[0] == "| method | step 4 | step 8 | lowest at | last - lowest |"  # no base NLL: no step 0
    for method, lowest in (("sft", 4), ("prift_mass", 8)):
        cells = []
        for step in (4, 8):
            values = [sft_curve(method, seed)[step] for seed in (0, 1)]
            cells.append(f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}")
        means = {step: np.mean([sft_curve(method, seed)[step] for seed in (0, 1)]) for step in (4, 8)}
        assert rows[method] == [*cells, str(lowest), f"{means[8] - means[lowest]:+.4f}"]
    assert (sweep / "report" / "sft_curves.png").exists() and "![sft curves](sft_curves.png)" in text


def test_the_sft_history_starts_at_the_base_models_heldout_nll(tmp_path):
    from workflows.report.collect import Run, sft_history

    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "heldout_curve.json").write_text(json.dumps({"2": 1.25, "4": 1.5}))
    history, source = sft_history(Run(tmp_path, "sft", 0, {}, manifest={}), None, base_nll=1.4)
    assert history == {"heldout_nll": {0: 1.4, 2: 1.25, 4: 1.5}}
    assert source == "none (no SFT checkpoint kept and no MLflow run) and sft/heldout_curve.json"


def test_findings_name_only_differences_whose_interval_excludes_zero(report):
    _, text, _ = report
    findings = next(line for line in text.splitlines() if line.startswith("**Findings.**"))
    # prift_mass solves 12 more problems per sample than sft on every seed: +40 points at SFT
    assert f"prift_mass above sft on gsm8k (SFT models), {avg(21) - avg(9):+.1f} points" in findings
    assert "Left out as RL results (no learning signal): sft seed 1." in findings
    rows = table_rows(text, "## Method comparisons (paired, Avg@n)")
    assert rows["prift_mass − sft (sft)"][5] == "difference"


def test_findings_say_no_significant_difference_when_every_interval_includes_zero(tmp_path):
    from workflows.report.tables import Group, comparisons, findings

    def group(method, solved):
        per_seed = [{"gsm8k": {"score": {f"p{p}": s for p, s in enumerate(scores(solved))}}}]
        return Group(f"{method} (sft)", method, "sft", [0], [{}], per_seed)

    found = comparisons([group("sft", 9), group("prift_prob", 10)])  # one problem's sample in 30
    assert len(found) == 1 and not found[0].interval.significant
    text = findings(found, [])
    assert "No significant difference between the methods: every one of the 1 paired 95% intervals includes 0" in text
    assert "none of these tests could have detected a difference smaller than " in text
    assert "above" not in text and "below" not in text
    assert findings([], []) == ("**Findings.** No two methods could be compared (one method in the sweep, "
                                "or no per-problem scores).")


def test_parents_get_drift_intervals_and_the_sft_to_rl_change_as_metrics(report):
    from workflows.report.stats import bootstrap_mean

    sweep, _, tracker = report
    runs = {json.loads((f / "manifest.json").read_text())["mlflow_run_id"]: f.name
            for f in sweep.iterdir() if f.name.startswith(("sft-", "prift_mass-"))}
    for run_id, name in runs.items():
        metrics = tracker.client.get_run(run_id).data.metrics
        method, seed = name.split("-tiny-s")[0], int(name.split("-tiny-s")[1][0])
        change = (avg(SOLVED[(method, seed, "rl")]) - avg(SOLVED[(method, seed, "sft")])) / 100
        assert metrics["sft_to_rl/gsm8k/avg_at_2"] == pytest.approx(change)
        assert metrics["sft_to_rl/gsm8k/avg_at_2/lo"] <= change <= metrics["sft_to_rl/gsm8k/avg_at_2/hi"]
        per_problem = np.array([[np.mean(r) for r in scores(SOLVED[(method, seed, "sft")])]])
        expected = bootstrap_mean([per_problem])  # this run's own problems, one seed
        assert metrics["ci95/sft/gsm8k/avg_at_2/lo"] == pytest.approx(expected.lo)
        assert metrics["ci95/sft/gsm8k/avg_at_2/hi"] == pytest.approx(expected.hi)
        assert {"ci95/rl/gsm8k/pass_at_2/lo", "sft_to_rl/gsm8k/pass_at_2/hi"} <= set(metrics)
        assert "report/report.md" in [a.path for a in tracker.client.list_artifacts(run_id, "report")]


def test_every_figure_gives_a_method_the_same_colour_and_tells_zero_from_missing():
    from matplotlib.colors import to_rgba

    from workflows.report.figures import SFT_ALPHA, comparison_figure, method_colour, weights_figure

    bars = [{"label": "sft (sft)", "method": "sft", "stage": "sft", "flagged": False,
             "values": {"a": [0.0], "b": [0.5]}},
            {"label": "dft (rl)", "method": "dft", "stage": "rl", "flagged": False, "values": {"a": [0.25]}},
            {"label": "prift_mass (rl)", "method": "prift_mass", "stage": "rl", "flagged": False,
             "values": {"a": [0.2, 0.4], "b": [0.6, 0.6]}}]
    ax = comparison_figure(bars, ["a", "b"], {"a": (3, 2), "b": (4, 2)}, "Avg@n").axes[0]
    filled = [p for p in ax.patches if p.get_hatch() != "//"]
    assert [p.get_facecolor() for p in filled] == [
        to_rgba(method_colour("sft"), SFT_ALPHA), to_rgba(method_colour("sft"), SFT_ALPHA),
        to_rgba(method_colour("dft")), to_rgba(method_colour("prift_mass")), to_rgba(method_colour("prift_mass"))]
    assert filled[0].get_height() == 0.0  # zero: a bar of height 0 labelled 0.0 ...
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["0.0", "50.0", "25.0", "n/a", "30.0", "60.0"]  # ... missing: an outline marked n/a
    hatched = [p for p in ax.patches if p.get_hatch() == "//"]
    assert len(hatched) == 1 and hatched[0].get_facecolor()[3] == 0.0  # an empty outline
    assert len(ax.collections) == 2  # error bars (std) only for the two-seed bars
    assert "n = 2 samples per problem" in ax.get_title() and ax.get_xticklabels()[0].get_text() == "a\n(3 problems)"

    fig = weights_figure({"sft": np.ones(10), "prift_mass": np.array([0.0] * 4 + [1.0] * 6)})
    assert fig._suptitle.get_text().startswith("Per-token training weight by method (10 response tokens")
    first, second = fig.axes
    assert first.get_shared_y_axes().joined(first, second)
    assert first.patches[0].get_facecolor() == to_rgba(method_colour("sft"))
    assert second.patches[0].get_facecolor() == to_rgba(method_colour("prift_mass"))
    assert sum(p.get_height() for p in second.patches) == pytest.approx(1.0)  # shares of the tokens


def test_rl_curves_come_from_the_rl_stage_mlflow_run_when_no_checkpoint_was_kept(report, tmp_path):
    from workflows.report.collect import Run, rl_history

    _, _, tracker = report
    stage = tracker.run(None, "rl", {"stage": "rl"})
    for step, reward, length in LOGS[("prift_mass", 0)]:
        tracker.metrics(stage, {"reward": reward, "completions/mean_length": length, "loss": 0.0}, step=step)
    run = Run(tmp_path, "prift_mass", 0, {}, manifest={"stages": {"rl": {"mlflow_run_id": stage}}})
    history, source = rl_history(run, tracker.uri)
    assert source == f"MLflow run {stage}"
    assert history == {"reward": {1: 0.4, 2: 0.5, 3: 0.7}, "completions/mean_length": {1: 24.0, 2: 22.0, 3: 20.0}}
    assert rl_history(run, None) == ({}, "none (no RL checkpoint kept and no MLflow run)")


def test_rl_curves_come_from_the_finished_stage_summary_first(tmp_path):
    from workflows.report.collect import Run, rl_history

    final = tmp_path / "rl" / "final"
    final.mkdir(parents=True)
    logged = [{"step": 1, "reward": 0.25, "loss": 0.0}, {"step": 2, "reward": 0.5, "kl": 0.01}, {"train_runtime": 9.0}]
    (final / "prift_rl.json").write_text(json.dumps({"learning_signal": {"ok": True}, "log_history": logged}))
    stale = tmp_path / "rl" / "checkpoints" / "checkpoint-1"  # an older, shorter history: not the one read
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text(json.dumps({"log_history": logged[:1]}))
    history, source = rl_history(Run(tmp_path, "sft", 0, {}, manifest={}), None)
    assert source == "rl/final/prift_rl.json"
    assert history == {"reward": {1: 0.25, 2: 0.5}, "kl": {2: 0.01}}
    (final / "prift_rl.json").unlink()  # a stage stopped before its end: its newest checkpoint's history
    history, source = rl_history(Run(tmp_path, "sft", 0, {}, manifest={}), None)
    assert source == "rl/checkpoints/checkpoint-1/trainer_state.json" and history == {"reward": {1: 0.25}}


def test_room_for_rl_shows_pass_at_k_curves_and_the_answers_each_problem_gets(report):
    from workflows.report.stats import pass_at_k_curve

    sweep, text, _ = report
    assert (sweep / "report" / "pass_at_k.png").stat().st_size > 0
    # 2 samples: Pass@1 = the share of correct samples, Pass@2 = problems with at least one correct
    solved = SOLVED[("prift_mass", 0, "sft")]
    per_seed = [{f"p{p}": row for p, row in enumerate(scores(solved))}] * 2
    ks, values = pass_at_k_curve(per_seed)
    assert ks == [1, 2] and values == pytest.approx([avg(solved) / 100, (solved + 3) / PROBLEMS])
    # a problem both samples solve states one answer; any other states two (each wrong one differs)
    distinct = table_rows(text, "Pass@n and Pass@1 is what RL can turn into first-try answers. Mean different final "
                                "answers per problem among its samples (a sample with no answer adds none; n/a for "
                                "code, whose samples state programs):")
    expected = (solved * 1 + (PROBLEMS - solved) * 2) / PROBLEMS
    assert distinct["prift_mass (sft)"] == [f"{expected:.2f}"]
    # per problem the mean over its samples, then over problems: both right 0.5, one right 1.25,
    # none right 2.0 (the last problem's empty sample left out: 2.0, not 1.0)
    entropies = table_rows(text, "then the problems. Higher: the model still spreads its mass where it writes; near 0: "
                                 "it has settled on one way to write the answer:")
    def expected_entropy(solved: int) -> float:
        return (solved * 0.5 + 3 * 1.25 + (PROBLEMS - solved - 3) * 2.0) / PROBLEMS

    assert entropies["prift_mass (sft)"] == [f"{expected_entropy(solved):.2f}"]
    # the base row too (solved = 0: every problem states two answers), the pretrained reference point
    assert set(entropies) == set(distinct) and "base" in distinct
    assert (distinct["base"], entropies["base"]) == (["2.00"], [f"{expected_entropy(0):.2f}"])


def test_code_samples_count_no_distinct_answers_but_keep_their_entropy(tmp_path):
    """A code sample's `extracted` is the sandbox verdict ("passed", "failed"): counting those as
    answers would call every model's code samples settled."""
    from workflows.report.collect import distinct_answers, rows_by_problem, token_entropy

    for task, extracted in (("humaneval", "failed"), ("gsm8k", "7")):
        (tmp_path / task).mkdir()
        rows = [{"id": "p0", "sample": i, "score": 0.0, "extracted": extracted, "mean_token_entropy": 1.0 + i}
                for i in range(2)]
        (tmp_path / task / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rows = rows_by_problem(tmp_path)
    assert distinct_answers(rows) == {"gsm8k": {"p0": 1}}
    assert token_entropy(rows) == {"gsm8k": {"p0": 1.5}, "humaneval": {"p0": 1.5}}


def test_every_named_method_has_its_own_colour():
    from prift.weights import METHODS
    from workflows.report.figures import method_colour

    colours = [method_colour(m) for m in ["base", *METHODS]]
    assert len(set(colours)) == len(colours)


def test_each_prior_twin_is_compared_with_its_online_form():
    from workflows.report.tables import Group, comparisons

    def group(method, solved):
        per_seed = [{"gsm8k": {"score": {f"p{p}": s for p, s in enumerate(scores(solved))}}}]
        return Group(f"{method} (sft)", method, "sft", [0], [{}], per_seed)

    found = comparisons([group("sft", 9), group("eaft", 10), group("prift_eaft", 21), group("rho1", 9)])
    pairs = {(c.a, c.b) for c in found}
    assert pairs == {("eaft", "sft"), ("prift_eaft", "sft"), ("rho1", "sft"), ("prift_eaft", "eaft")}
    twin_row = next(c for c in found if (c.a, c.b) == ("prift_eaft", "eaft"))
    assert twin_row.interval.significant and twin_row.interval.estimate > 0
