"""The `prift` command.

    prift run CONFIG [--set a.b=c ...]        the whole pipeline (prior -> sft -> rl -> eval, every method
                                               and seed) as Ray tasks, resumable, tracked in MLflow
    prift validate CONFIG [--set a.b=c ...]   everything `run` checks before it computes (config, model,
                                               data, tasks, RL prompts, GPUs), every problem at once
    prift validate CONFIG --explain            every field of the parsed config: its value and what it means
    prift prior CONFIG                         score the SFT data with the frozen reference (cached)
    prift sft CONFIG                           weighted SFT (runs the prior first if it is missing)
    prift rl CONFIG [--model M]                GRPO from M (default: OUTPUT_DIR/sft/final if it exists,
                                               else the config's model) -> OUTPUT_DIR/rl/final
    prift eval CONFIG [--model M] [--name N]   benchmarks for a model (default: the config's base
                                               model) -> OUTPUT_DIR/eval/N/<task>/
    prift report SWEEP [--storage DIR]         method x task tables, drift from the base, token view
                                               of a finished sweep -> SWEEP/report/ and MLflow
    prift plan CONFIG [--accuracy P] [--from SWEEP]   the difference each task's comparisons could
                                               detect (95%, 80% power) and the tokens to generate

Heavy libraries are imported only by the subcommand that needs them. A problem with what the user
gave (an `InputError`: config, model, data, tasks, resources) is a message on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("prift")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prift", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "validate", "prior", "sft", "rl", "eval", "plan"):
        p = sub.add_parser(name)
        p.add_argument("config")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        if name in ("rl", "eval"):
            p.add_argument("--model", help="model folder or hub name (defaults: see above)")
        if name == "eval":
            p.add_argument("--name", help="results folder under eval/; default: 'base' or the model folder's name")
        if name == "plan":
            p.add_argument("--accuracy", type=float, default=0.5,
                           help="assumed accuracy of the compared models (default 0.5, the worst case)")
            p.add_argument("--from", dest="earlier", type=Path,
                           help="an earlier sweep folder: its measured errors and generation rates instead")
        if name == "validate":
            p.add_argument("--explain", action="store_true",
                           help="print every field of the parsed config with its value and documentation, "
                                "instead of the checks that load models and data")
    p = sub.add_parser("report")
    p.add_argument("sweep", help="a sweep folder (<storage>/<experiment>) or an experiment name")
    p.add_argument("--storage", default="runs", help="where to look for an experiment name (default: runs)")
    p.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the MLflow runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from common.errors import InputError, RunsFailed

    try:
        return _command(args)
    except InputError as e:  # bad input, found before any compute: the message, not a traceback
        print(e, file=sys.stderr)
        return 2
    except RunsFailed as e:  # each run's outcome is printed above; the finished ones are kept
        print(e, file=sys.stderr)
        return 1


def _command(args) -> int:
    if args.command == "report":
        from workflows.report import write_report
        from workflows.report.collect import resolve_sweep

        print(write_report(resolve_sweep(args.sweep, args.storage), to_mlflow=not args.no_mlflow))
        return 0
    from common.errors import InputError
    from workflows.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "plan":
        from workflows.plan import plan, render

        if args.earlier and not args.earlier.is_dir():
            raise InputError(f"--from: {args.earlier} is not a sweep folder")
        print(render(plan(cfg, args.accuracy, args.earlier)))
        return 0
    if args.command == "validate" and args.explain:
        from workflows.explain import render

        print(render(cfg))
        return 0
    if args.command == "validate":
        from workflows.preflight import preflight
        from workflows.ray_session import ray_session

        with ray_session():
            preflight(cfg)
        print(f"{args.config}: ok")
        return 0
    _dispatch(args, cfg)
    return 0


def _dispatch(args, cfg) -> None:
    """One command; a single stage first checks its model as preflight would (no weights read)."""
    from common.models import check_model

    out = Path(cfg.output_dir)
    if args.command == "run":
        from workflows.pipeline import run_pipeline

        run_pipeline(cfg)
    elif args.command == "prior":
        from prift.prior import run_prior

        check_model(cfg.model)
        print(run_prior(cfg.model, cfg.data, cfg.prior, out / "prior"))
    elif args.command == "sft":
        from prift.sft import run_sft

        check_model(cfg.model)
        print(run_sft(cfg.model, cfg.data, cfg.prior, cfg.sft, out / "sft", prior_dir=out / "prior",
                      heldout=cfg.heldout))
    elif args.command == "rl":
        from rl.grpo import run_rl

        sft_final = out / "sft" / "final"
        model = args.model or (str(sft_final) if sft_final.exists() else cfg.model)
        check_model(model, "--model" if args.model else "model")
        print(run_rl(model, cfg.rl, out / "rl", eval_tasks=cfg.eval.tasks))
    elif args.command == "eval":
        from evals.stage import run_eval

        model = args.model or cfg.model
        check_model(model, "--model" if args.model else "model", chat_template=False)
        name = args.name or ("base" if model == cfg.model else Path(model).name)
        summary = run_eval(model, cfg.eval, out / "eval" / name)
        if cfg.heldout:
            from evals.stage import summarize
            from prift.heldout import heldout_nll

            heldout = heldout_nll(model, cfg.heldout, out / "eval" / name)
            summary = summarize(model, out / "eval" / name, [t.name for t in cfg.eval.tasks], heldout)
            print(json.dumps(heldout, indent=2))
        print(json.dumps(summary["domains"], indent=2))


if __name__ == "__main__":
    sys.exit(main())
