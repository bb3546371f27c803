"""benchmarks/gpu_check.sh keeps working where no GPU is: its --tiny run takes the same path on CPU."""

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_gpu_check_tiny_runs_and_cached_prior_trains_exactly_like_the_online_reference_in_float32():
    res = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": "/tmp"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for variant in ("plain_sft", "prift_cached", "prift_online"):
        assert re.search(rf"^{variant}\s+\d+\.\d+\s+\d+\.\d+\s+\d+", out, re.M), out
    assert re.search(r"prior pass \d+ tok/s vs plain no-grad forward \d+ tok/s", out), out
    diff = re.search(r"prift_mass\s+3 steps, .*max \|cached - online\| = (\S+) ", out)
    assert diff, out
    assert float(diff.group(1)) < 1e-6  # float32 on CPU: same signals, same training
