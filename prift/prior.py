"""The prior stage: score SFT data once with the frozen reference and store four numbers per token.

PriFT's weight depends only on (reference, data), so instead of running a second full model on every
training batch (the official code), this stage runs it once, with no gradient, over the tokenized
data and stores per response token

    prior_logprob = log q(y_t)     prior_mass = u_t   (see prift.signals)
    prior_entropy = H(q_t)         prior_entropy_top = EAFT's top-20 entropy of q_t

next to the token ids. Training then reads them from the batch: one pass serves every epoch, both
PriFT variants, every rule of the family and every seed of a sweep. The scoring itself is
prift.reference; this module decides what is scored, where it goes, and when it is done.

The input rows are cut into shards of `shard_rows` consecutive rows, fixed by the row count alone.
Each shard is tokenized, scored (length-sorted batches within the shard) and written as one Arrow
file as soon as it is done, so memory holds one shard's tokens and signals whatever the row count.
A shard file appears only when complete (tmp then rename): after a kill, a rerun scores only the
shards that have no file. Shards go to `workers` processes, one per GPU; what a shard holds depends
only on its rows, so the result is the same for any number of workers.

    prift prior CONFIG        # see workflows/configs/demo.yaml
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from common import atomic
from common.errors import InputError
from common.precision import PRECISIONS, Precision, resolve_dtype
from common.checks import at_least, one_of, require
from common.digest import json_digest
from prift.data import DataConfig, DataError, log_tokenized, prepare_conversations, tokenize_batch
from common.models import (
    default_device,
    fingerprint_model,
    fingerprint_tokenizer,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
)
from prift.reference import STORED_SIGNALS, score_rows
from prift.signals import DEFAULT_ROW_CHUNK, DEFAULT_VOCAB_CHUNK

log = logging.getLogger(__name__)

# Bump when what is stored, or how it is computed, changes: the format is part of the cache key, so
# a cache of another format is never read, its data rescored (2: Arrow shards; 3: the entropies).
CACHE_FORMAT = 3
SIGNAL_COLUMNS = tuple(f"prior_{name}" for name in STORED_SIGNALS)

SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("response_mask", pa.list_(pa.int8())),
        *((col, pa.list_(pa.float32())) for col in SIGNAL_COLUMNS),
        ("index", pa.int64()),
    ]
)
STATS_KEY = b"prift_shard_stats"  # schema metadata of each shard: its counts, written with it


@dataclass(frozen=True)
class PriorConfig:
    """The frozen reference and how its per-token signals are produced."""

    reference: str = ""
    """Reference model (local folder, hub name, or an embedded name); empty: the policy's base model."""
    mode: Literal["cached", "online"] = "cached"
    """`cached`: score the data once in the prior stage; `online`: run the resident reference on
    every training batch (the official implementation; kept as a baseline and for equivalence tests)."""
    batch_tokens: int = 16384
    """Padded tokens per scoring batch (batches are formed from length-sorted rows of one shard)."""
    row_chunk: int = DEFAULT_ROW_CHUNK
    """Positions sent through the output head at once: bounds the [rows, vocab] logits block."""
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK
    """Vocabulary slice reduced at once in float32."""
    precision: Precision = "auto"
    """The reference's weights: `auto` is bf16 on a GPU that has it, float32 otherwise."""
    workers: int = 0
    """Scoring processes, worker i on GPU i (modulo the visible GPUs); 0: one per visible GPU, or 1
    without a GPU. The stored result does not depend on it."""
    shard_rows: int = 4096
    """Input rows per shard: what is held in memory, written at once, and redone after a kill."""

    def __post_init__(self):
        require(
            at_least("batch_tokens", self.batch_tokens, 1),
            at_least("row_chunk", self.row_chunk, 1),
            at_least("vocab_chunk", self.vocab_chunk, 1),
            at_least("workers", self.workers, 0),
            at_least("shard_rows", self.shard_rows, 1),
            one_of("precision", self.precision, PRECISIONS),
        )


# ----------------------------------------------------------------------------------- inputs


def check_same_vocab(policy: str, reference: str) -> None:
    """Reject a reference whose vocabulary differs from the policy's, before loading either model."""
    from transformers import AutoConfig

    sizes = [AutoConfig.from_pretrained(resolve_model_path(m)).vocab_size for m in (policy, reference)]
    if sizes[0] != sizes[1]:
        raise InputError(
            f"prior.reference: {reference!r} has vocab size {sizes[1]}, the policy {policy!r} has {sizes[0]}; "
            "the reference must share the policy's tokenizer"
        )
    if reference != policy:
        fps = [fingerprint_tokenizer(load_tokenizer(m)) for m in (policy, reference)]
        if fps[0] != fps[1]:
            raise InputError(f"prior.reference: {reference!r} uses a different tokenizer than the policy {policy!r}")


def cache_key(reference: str, tokenizer, data_key: str, data: DataConfig, dtype) -> str:
    """What decides the stored numbers. Batch, chunk and shard sizes and the worker count only
    regroup the same rows (reordering float32 sums at most), so they are not in it."""
    parts = {
        "format": CACHE_FORMAT,
        "reference": fingerprint_model(reference),
        "tokenizer": fingerprint_tokenizer(tokenizer),
        "data": data_key,
        "max_length": data.max_length,
        "dtype": str(dtype),
    }
    return json_digest(parts)[:16]


# ----------------------------------------------------------------------------------- shards


def shard_ranges(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """[start, end) of each shard: consecutive input rows, fixed by the row count and shard size."""
    return [(s, min(s + shard_rows, rows)) for s in range(0, rows, shard_rows)]


def shard_path(folder: Path, start: int, end: int) -> Path:
    return folder / f"shard-{start:010d}-{end:010d}.arrow"


def _list_array(seqs: list, dtype) -> pa.ListArray:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    values = np.concatenate([np.asarray(s, dtype=dtype) for s in seqs]) if seqs else np.empty(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def write_shard(path: Path, rows: list[dict], scored: list, counts: dict) -> None:
    """One Arrow IPC stream file holding the shard's rows in input order; its statistics ride in the
    schema metadata, so the file alone says what it holds. Atomic: tmp, then rename."""
    masks = [np.asarray(r["response_mask"], dtype=bool) for r in rows]
    lps = np.concatenate([s["logprob"][m] for s, m in zip(scored, masks)]) if rows else np.empty(0, np.float32)
    us = np.concatenate([s["mass"][m] for s, m in zip(scored, masks)]) if rows else np.empty(0, np.float32)
    stats = counts | {
        "kept": len(rows),
        "response_tokens": int(lps.size),
        "prob_sum": float(np.exp(lps.astype(np.float64)).sum()),
        "mass_ge_half": int((us >= 0.5).sum()),
    }
    columns = [
        _list_array([r["input_ids"] for r in rows], np.int32),
        _list_array([r["response_mask"] for r in rows], np.int8),
        *(_list_array([s[name] for s in scored], np.float32) for name in STORED_SIGNALS),
        pa.array([r["index"] for r in rows], pa.int64()),
    ]
    schema = SCHEMA.with_metadata({STATS_KEY: json.dumps(stats)})
    with atomic.replacing(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def read_shard_stats(path: Path) -> dict:
    with pa.memory_map(str(path)) as source:
        return json.loads(pa.ipc.open_stream(source).schema.metadata[STATS_KEY])


class ShardScorer:
    """Tokenizes and scores shards in one process; the reference loads on the first shard with rows."""

    def __init__(self, model_name: str, reference: str, dtype, device, cfg: PriorConfig,
                 max_length: int, tokenizer=None):
        self.reference, self.dtype, self.device, self.cfg, self.max_length = reference, dtype, device, cfg, max_length
        self.tokenizer = tokenizer or load_tokenizer(model_name)
        self._model = None

    def model(self):
        if self._model is None:
            model = load_causal_lm(self.reference, dtype=self.dtype, device=self.device).eval()
            if model.config.vocab_size < len(self.tokenizer):
                raise InputError(
                    f"prior.reference: vocab size {model.config.vocab_size} < tokenizer size {len(self.tokenizer)}"
                )
            self._model = model
        return self._model

    def score_shard(self, conversations: list, start: int, path: Path) -> None:
        rows, dropped, truncated = tokenize_batch(conversations, self.tokenizer, self.max_length, first_index=start)
        scored = score_rows(self.model(), rows, self.cfg, progress=False) if rows else []
        write_shard(path, rows, scored, {"rows": len(conversations), "dropped": dropped, "truncated": truncated})


_WORKER: ShardScorer | None = None  # the scorer of a worker process (set by _start_worker)


def _start_worker(ranks, scorer_args: dict, device_type: str, threads: int) -> None:
    global _WORKER
    rank = ranks.get()
    if device_type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
        torch.set_num_threads(threads)  # the workers share the cores instead of each taking all of them
    _WORKER = ShardScorer(**scorer_args, device=device)


def _score_in_worker(conversations: list, start: int, path: Path) -> None:
    _WORKER.score_shard(conversations, start, path)


def score_shards(pending, conversations, folder: Path, scorer_args: dict, device, workers: int, tokenizer) -> None:
    """Write every pending shard, in this process (1 worker) or in `workers` spawned processes."""
    done = 0

    def finished(start: int, end: int) -> None:
        nonlocal done
        done += 1
        log.info("prior: shard %d/%d written (rows %d-%d)", done, len(pending), start, end - 1)

    if workers == 1:
        scorer = ShardScorer(**scorer_args, device=device, tokenizer=tokenizer)
        for start, end in pending:
            scorer.score_shard(conversations[start:end], start, shard_path(folder, start, end))
            finished(start, end)
        return
    ctx = torch.multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    ranks = ctx.Queue()
    for rank in range(workers):
        ranks.put(rank)
    threads = max(1, torch.get_num_threads() // workers)
    init = (ranks, scorer_args, device.type, threads)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=init) as pool:
        futures = {
            pool.submit(_score_in_worker, conversations[s:e], s, shard_path(folder, s, e)): (s, e) for s, e in pending
        }
        try:
            for future in as_completed(futures):
                future.result()
                finished(*futures[future])
        except BaseException:
            pool.shutdown(cancel_futures=True)  # shards already running still finish and stay written
            raise


def worker_count(workers: int, device: torch.device) -> int:
    if workers:
        return workers
    return torch.cuda.device_count() if device.type == "cuda" else 1


# ----------------------------------------------------------------------------------- the stage


def run_prior(model_name: str, data: DataConfig, cfg: PriorConfig, prior_dir: str | Path) -> Path:
    """Score `data` with the reference (default: `model_name`); return the cache folder.

    Layout: <prior_dir>/<key>/{data/shard-*.arrow, meta.json}. Shards accumulate in
    <key>.partial/, which is renamed to <key> once every shard and meta.json are written: a folder
    named <key> is always complete. A second call with the same reference, tokenizer, data, max
    length and dtype finds it and returns at once; a call after a kill scores the missing shards.
    """
    reference = cfg.reference or model_name
    if reference != model_name:
        check_same_vocab(model_name, reference)
    conversations, tokenizer, data_key = prepare_conversations(model_name, data)
    device = default_device()
    dtype = resolve_dtype(cfg.precision, device)
    key = cache_key(reference, tokenizer, data_key, data, dtype)
    out = Path(prior_dir) / key
    if (out / "meta.json").exists():
        rows = json.loads((out / "meta.json").read_text())["rows"]
        log.info("prior cache hit: %s (reference %s, %d rows); nothing to compute", out, reference, rows)
        return out

    work = atomic.tmp_dir(out, ".partial")  # kept across runs: a rerun scores only the missing shards
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    shards = shard_ranges(len(conversations), cfg.shard_rows)
    planned = {shard_path(folder, *s) for s in shards}
    for stale in folder.iterdir():  # half-written shards, or shards of another shard_rows
        if stale not in planned:
            stale.unlink()
    pending = [s for s in shards if not shard_path(folder, *s).exists()]
    workers = min(worker_count(cfg.workers, device), max(len(pending), 1))
    log.info(
        "prior: %d rows in %d shards, %d already written; scoring the rest with reference %s (%s, %s, %d worker%s)",
        len(conversations), len(shards), len(shards) - len(pending), reference, device.type, dtype, workers,
        "s" * (workers > 1),
    )
    scorer_args = {"model_name": model_name, "reference": reference, "dtype": dtype, "cfg": cfg,
                   "max_length": data.max_length}
    score_shards(pending, conversations, folder, scorer_args, device, workers, tokenizer)

    stats = [read_shard_stats(shard_path(folder, *s)) for s in shards]
    total = {k: sum(s[k] for s in stats) for k in stats[0]}
    log_tokenized(total["rows"], total["kept"], total["dropped"], total["truncated"], data.max_length)
    if not total["kept"]:
        raise DataError(f"no row has a response token left within max_length={data.max_length}")
    tokens = max(total["response_tokens"], 1)
    meta = {
        "format": CACHE_FORMAT,
        "reference": reference,
        "rows": total["kept"],
        "dtype": str(dtype),
        "shards": len(shards),
        "response_tokens": total["response_tokens"],
        "mean_prob": total["prob_sum"] / tokens,
        "frac_mass_ge_0.5": total["mass_ge_half"] / tokens,
    }
    (work / "meta.json").write_text(json.dumps(meta, indent=2))
    atomic.publish_dir(work, out)  # the folder named <key> appears complete or not at all
    log.info("prior stored at %s: %s", out, json.dumps(meta))
    return out


def load_prior(folder: str | Path):
    """The stored rows in input order as one `datasets.Dataset` (input_ids, response_mask, the
    SIGNAL_COLUMNS, index), memory-mapped from the shard files: nothing is copied into
    Python objects until a row is read."""
    import datasets

    files = sorted((Path(folder) / "data").glob("shard-*.arrow"))
    table = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])
    missing = [c for c in SIGNAL_COLUMNS if c not in table.column_names]
    if missing:  # a folder of another cache format, reached by path: never read its columns as ours
        raise InputError(f"prior cache {folder} lacks {missing}: written by another cache format; rescore it")
    return table
