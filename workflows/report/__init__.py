"""`prift report`: what PriFT changed, per method, per domain, per token, for a finished sweep.

    prift report runs/demo                 # a sweep folder (<storage>/<experiment>) ...
    prift report demo --storage runs       # ... or its experiment name

Reads the run directory (the source of truth for what finished) and writes <sweep>/report/:
  report.md       the findings (generated from paired bootstrap tests), the runs, method x task
                  tables (Avg@n mean ± std over seeds; per task Avg@n, Pass@n with 95%
                  bootstrap intervals over problems and seeds; per domain), the method comparisons,
                  the SFT -> RL change per task, and the drift table
  comparison.png  the Avg@n table as grouped bars, one colour per method
  rl_curves.png   GRPO reward, KL to the SFT start and completion length by step, per method
  pass_at_k.png   Pass@k for k = 1..n per model (room for RL), beside each model's mean number of
                  different final answers per problem
  drift           mean per-token KL(fine-tuned || base) on general text and on the eval prompts
                  (drift.py)
  tokens.html     token_view.py: training tokens coloured by their PriFT weight
  weights.png     the per-token weight histogram of each method
The parts, each a module of this package: build.py (`write_report`, `log_to_mlflow`: the entry
point), collect.py (runs, samples, RL logs), stats.py (bootstrap, pure), tables.py (markdown and
findings), drift.py (models), figures.py, token_view.py.

Every file also goes to MLflow as artifacts (report/) of each parent run of the sweep, and each
parent gets metrics (`run_metrics`): its checkpoints' drift `drift/kl_<text set>/<stage>`, the
95% interval of each of its cells `ci95/<stage>/<task>/<metric>/lo|hi`, and its SFT -> RL change
`sft_to_rl/<task>/<metric>` with `/lo` and `/hi`, so the compare view of the parents shows them.
"""

from workflows.report.build import log_to_mlflow, write_report

__all__ = ["log_to_mlflow", "write_report"]
