"""One source for what each run of a sweep trains: pipeline.methods, or sft.rule under one name."""

import pytest

from workflows.config import ConfigError, StagesConfig, from_dict


def config(**sections) -> StagesConfig:
    return from_dict(StagesConfig, sections)


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
