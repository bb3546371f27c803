"""How far each fine-tuned model drifted from the base model: mean per-token KL(model || base).

Two text sets: general text (the documentation of Python standard-library modules, which every
install ships) and the sweep's eval prompts under the chat template. The paper's claim is that the
prior keeps the model closer to its pretrained distribution. The only part of the report that
loads models, each once: its KL is kept beside its weights (`CACHE`).
"""

from __future__ import annotations

import importlib
import json
import math

import torch

from common.digest import json_digest
from workflows.report.collect import Run

GENERAL_MODULES = ("json", "argparse", "collections", "textwrap", "random", "statistics", "fractions",
                   "decimal", "datetime", "calendar", "shutil", "tempfile", "heapq", "bisect", "functools", "csv")


def general_texts(n: int) -> list[str]:
    """Up to n paragraphs of English prose from the docstrings of standard-library modules."""
    paragraphs = []
    for name in GENERAL_MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        paragraphs += [" ".join(p.split()) for p in doc.split("\n\n") if len(p) >= 200]
    return paragraphs[:n]


@torch.no_grad()
def next_token_logits(model, sequences: list[list[int]]) -> list[torch.Tensor]:
    """The model's float32 logits [len - 1, vocab] for every next-token position of each sequence."""
    return [model(input_ids=torch.tensor([ids])).logits[0, :-1].float() for ids in sequences]


@torch.no_grad()
def mean_token_kl(model, base_logits: list[torch.Tensor], sequences: list[list[int]]) -> float:
    """Mean over every next-token position of KL(p_model || p_base), summed in float64. The base's
    logits (`next_token_logits`) are computed once per text set and shared by every model compared."""
    total, count = 0.0, 0
    for ids, base in zip(sequences, base_logits, strict=True):
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), -1)
        lq = torch.log_softmax(base.double(), -1)
        total += float((lp.exp() * (lp - lq)).sum())
        count += lp.shape[0]
    if count == 0:
        raise ValueError("no token positions to compare: every text is shorter than 2 tokens")
    kl = total / count
    if not math.isfinite(kl):
        raise FloatingPointError(f"non-finite KL ({kl}) between the model and the base")
    return kl


def drift_texts(base_model: str, eval_tasks: list, n: int, max_tokens: int) -> dict[str, list[list[int]]]:
    """Token ids of the two text sets the drift is measured on, truncated to max_tokens; a set
    with no text (a sweep without eval tasks) is left out."""
    from evals.generate import chat_ids
    from evals.tasks import TaskSpec, load_examples
    from common.models import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    general = [tokenizer(t)["input_ids"][:max_tokens] for t in general_texts(n)]
    prompts = [e.prompt for spec in eval_tasks for e in load_examples(TaskSpec(**spec))]
    evals = [ids[:max_tokens] for ids in chat_ids(tokenizer, prompts[:n])]
    return {name: seqs for name, seqs in (("general", general), ("eval_prompts", evals)) if seqs}


CACHE = "drift_kl.json"
"""Each model's KL to the base, kept in its checkpoint folder beside the weights, keyed by the base
model and the texts: a second report (or one built from a sweep's results without its weights)
reads it instead of loading the model again."""


def drift(runs: list[Run], base_model: str, texts: dict[str, list[list[int]]]) -> list[dict]:
    """One record per fine-tuned model: method, stage, seed and the mean token KL to the base per
    text set; from the model's cache (`CACHE`) where it holds these texts, else computed and cached."""
    from tqdm import tqdm

    from common import atomic
    from common.models import load_causal_lm

    key, base_logits, out = json_digest(base_model, texts), None, []
    todo = [(r, stage, path) for r in runs for stage, path in r.models().items()]
    for run, stage, path in tqdm(todo, desc="drift (KL to base)", unit="model"):
        cached = json.loads((path / CACHE).read_text()) if (path / CACHE).exists() else {}
        if cached.get("key") == key:
            kl = cached["kl"]
        else:
            if base_logits is None:
                base = load_causal_lm(base_model).eval()
                base_logits = {name: next_token_logits(base, seqs) for name, seqs in texts.items()}
                del base
            model = load_causal_lm(str(path)).eval()
            kl = {name: mean_token_kl(model, base_logits[name], seqs) for name, seqs in texts.items()}
            del model
            atomic.write_text(path / CACHE, json.dumps({"key": key, "base_model": base_model, "kl": kl}))
        out.append({"method": run.method, "stage": stage, "seed": run.seed, "kl": kl})
    return out
