"""SFT data: load rows (hub name or local file), validate them, and tokenize with a response-only mask.

Formatting follows the paper's recipe: the prompt is a user turn rendered by the tokenizer's chat
template with the generation prompt; the response is the demonstration text followed by EOS; the
loss (and every PriFT weight) is only on response tokens. Rows are right-truncated to `max_length`;
a row whose response is truncated away entirely is dropped and counted.

Two row shapes are accepted (field names configurable):
  {"prompt": "...", "response": "..."}
  {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}
With `messages`, the last turn must be the assistant's and is the one trained on; earlier turns
(system, user, earlier assistant turns) form the prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from common.checks import at_least, require
from common.errors import InputError, listing
from common.models import chat_prompt_ids

log = logging.getLogger(__name__)


class DataError(InputError):
    """Missing or malformed SFT data: the message names the file, and every bad line and row."""


@dataclass(frozen=True)
class DataConfig:
    """Where the SFT data comes from and how rows map to (prompt, response)."""

    path: str = ""
    """A local .jsonl/.json/.parquet file, a dataset name on the Hugging Face hub, or
    `reasoning_gym:<dataset>` (generated worked solutions; `limit` rows, seed 0; e.g. gsm_symbolic)."""
    split: str = "train"
    """Split to read for hub datasets (ignored for local files)."""
    prompt_field: str = "prompt"
    """Field holding the user prompt (prompt/response rows)."""
    response_field: str = "response"
    """Field holding the demonstration response (prompt/response rows)."""
    messages_field: str = "messages"
    """Field holding a chat conversation; used when a row has it and no prompt field."""
    system_prompt: str = ""
    """Optional system turn prepended to prompt/response rows."""
    limit: int = 0
    """Use only the first `limit` rows (0: all). The paper uses the first 100,000 of NuminaMath-CoT."""
    max_length: int = 2048
    """Prompt + response tokens kept per row (right truncation)."""

    def __post_init__(self):
        require(at_least("limit", self.limit, 0), at_least("max_length", self.max_length, 2))


def load_rows(cfg: DataConfig) -> list[dict]:
    """Rows as plain dicts, in file order, cut to `cfg.limit`; a DataError lists every unreadable line."""
    rows, _, problems = read_rows(cfg)
    if problems:
        raise data_error(cfg, problems)
    return rows


def check_data(cfg: DataConfig) -> None:
    """Read and check every row before any model loads; one DataError names every unreadable line
    and every malformed row (a user fixes them all in one pass, not one per run)."""
    rows, where, problems = read_rows(cfg)
    problems += _conversations(rows, where, cfg)[1]
    if not rows and not problems:
        problems.append("no rows")
    if problems:
        raise data_error(cfg, problems)


def data_error(cfg: DataConfig, problems: list[str]) -> DataError:
    count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
    return DataError(f"data.path: {cfg.path}: {count}:\n{listing(problems)}")


def read_rows(cfg: DataConfig) -> tuple[list[dict], list[str], list[str]]:
    """(rows cut to `cfg.limit`, where each row is in the file, problems): the lines of a .jsonl
    that are not JSON are problems, not exceptions, so that the rows after them are checked too."""
    if not cfg.path:
        raise DataError("data.path: expected a local file or a hub dataset name, got an empty string")
    if cfg.path.startswith("reasoning_gym:"):
        rows, where, problems = _reasoning_gym_rows(cfg.path.split(":", 1)[1], cfg.limit or 256), None, []
    else:
        path = Path(cfg.path)
        if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
            if not path.is_file():
                raise DataError(f"data.path: file {path} does not exist")
            rows, where, problems = _read_local(path)
        else:
            rows, where, problems = _hub_rows(cfg), None, []
    where = where or [""] * len(rows)
    if cfg.limit:
        rows, where = rows[: cfg.limit], where[: cfg.limit]
    return rows, where, problems


def _hub_rows(cfg: DataConfig) -> list[dict]:
    import datasets  # a hub name: only users with network access get here

    try:
        ds = datasets.load_dataset(cfg.path, split=cfg.split)
    except Exception as e:  # not found, offline, bad split: datasets raises many kinds
        raise DataError(
            f"data.path: {cfg.path!r} is neither a local file nor a hub dataset that loads "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); without hub access, "
            "point data.path at a local .jsonl/.json/.parquet file"
        ) from None
    if cfg.limit:
        ds = ds.select(range(min(cfg.limit, len(ds))))
    return ds.to_list()


def _reasoning_gym_rows(name: str, size: int) -> list[dict]:
    """Prompt / worked-solution rows from a seeded reasoning-gym generator whose entries carry a
    chain of thought (gsm_symbolic: metadata.answer_cot); the response ends with the boxed answer,
    the format the math evaluation asks for."""
    import reasoning_gym

    try:
        entries = list(reasoning_gym.create_dataset(name, size=size, seed=0))
    except Exception as e:  # reasoning-gym raises assorted errors for unknown names
        raise DataError(f"data.path: reasoning_gym:{name}: {type(e).__name__}: {e}") from None
    rows = []
    for entry in entries:
        cot = entry["metadata"].get("answer_cot")
        if cot is None:
            raise DataError(f"data.path: reasoning_gym:{name} entries have no worked solution (metadata.answer_cot)")
        rows.append({"prompt": entry["question"], "response": f"{cot.strip()}\n\nThe answer is \\boxed{{{entry['answer']}}}."})
    return rows


def _read_local(path: Path) -> tuple[list[dict], list[str] | None, list[str]]:
    """(rows, `file:line: ` of each row of a .jsonl, problems)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist(), None, []
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text), None, []
    except (OSError, ValueError) as e:  # pyarrow's errors are OSError/ValueError; JSONDecodeError is a ValueError
        raise DataError(f"data.path: {path}: cannot be read ({type(e).__name__}: {e})") from None
    rows, where, problems = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
                where.append(f"{path.name}:{lineno}: ")
            except json.JSONDecodeError as e:
                problems.append(f"{path.name}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
    return rows, where, problems


def to_conversation(row: dict, index: int, cfg: DataConfig) -> tuple[list[dict], str]:
    """(prompt messages, response text) for one row; DataError names the row and field when malformed."""
    if not isinstance(row, dict):
        raise DataError(f"row {index}: expected an object, got {type(row).__name__}")
    if cfg.prompt_field in row or cfg.messages_field not in row:
        prompt = _text_field(row, index, cfg.prompt_field, allow_empty=True)
        response = _text_field(row, index, cfg.response_field, allow_empty=False)
        system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
        return system + [{"role": "user", "content": prompt}], response
    messages = row[cfg.messages_field]
    field = cfg.messages_field
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(f"row {index}: field '{field}' must be a list of at least 2 turns")
    for t, turn in enumerate(messages):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(
            turn.get("content"), str
        ):
            raise DataError(f"row {index}: field '{field}[{t}]' must have string 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"row {index}: field '{field}' must end with an assistant turn")
    if not messages[-1]["content"].strip():
        raise DataError(f"row {index}: field '{field}[-1].content' is an empty response")
    return messages[:-1], messages[-1]["content"]


def _text_field(row: dict, index: int, field: str, *, allow_empty: bool) -> str:
    if field not in row:
        raise DataError(f"row {index}: missing field '{field}'")
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"row {index}: field '{field}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"row {index}: field '{field}' is empty")
    return value


def validate_rows(rows: list[dict], cfg: DataConfig) -> list[tuple[list[dict], str]]:
    """All rows as conversations, or one DataError naming every bad row (before any model loads)."""
    if not rows:
        raise DataError(f"data.path: {cfg.path} has no rows")
    conversations, problems = _conversations(rows, [""] * len(rows), cfg)
    if problems:
        raise data_error(cfg, problems)
    return conversations


def _conversations(rows: list[dict], where: list[str], cfg: DataConfig) -> tuple[list, list[str]]:
    """(conversations of the good rows, a problem per bad row, prefixed with where it is)."""
    conversations, problems = [], []
    for i, row in enumerate(rows):
        try:
            conversations.append(to_conversation(row, i, cfg))
        except DataError as e:
            problems.append(f"{where[i]}{e}")
    return conversations, problems


def tokenize_rows(conversations, tokenizer, max_length: int) -> list[dict]:
    """Token ids and response mask per row; rows with no response token left are dropped (logged).

    Each kept row: input_ids (list[int]), response_mask (1 on response tokens incl. EOS), index
    (position in the input), num_truncated (response tokens cut by max_length).
    """
    out, dropped, truncated = tokenize_batch(conversations, tokenizer, max_length)
    log_tokenized(len(conversations), len(out), dropped, truncated, max_length)
    if not out:
        raise DataError(f"no row has a response token left within max_length={max_length}")
    return out


def tokenize_batch(conversations, tokenizer, max_length: int, first_index: int = 0) -> tuple[list[dict], int, int]:
    """(kept rows as in `tokenize_rows`, rows dropped, responses truncated) for one batch of
    conversations, whose first one has index `first_index`; nothing is logged or raised on an empty result.

    Prompts are rendered one by one by the chat template (Jinja), then all prompts and all responses
    are encoded in two batched calls of the fast tokenizer: the ids equal per-row encoding.
    """
    check_chat_tokenizer(tokenizer)
    if not conversations:
        return [], 0, 0
    prompts = chat_prompt_ids(tokenizer, [messages for messages, _ in conversations])
    responses = tokenizer([response for _, response in conversations], add_special_tokens=False)["input_ids"]
    out, dropped, truncated = [], 0, 0
    for i, (prompt_ids, response_ids) in enumerate(zip(prompts, responses)):
        response_ids = list(response_ids) + [tokenizer.eos_token_id]
        ids = (list(prompt_ids) + response_ids)[:max_length]
        n_response = len(ids) - len(prompt_ids)
        if n_response <= 0:
            dropped += 1
            continue
        truncated += n_response < len(response_ids)
        out.append(
            {
                "input_ids": ids,
                "response_mask": [0] * len(prompt_ids) + [1] * n_response,
                "index": first_index + i,
                "num_truncated": len(response_ids) - n_response,
            }
        )
    return out, dropped, truncated


def log_tokenized(rows: int, kept: int, dropped: int, truncated: int, max_length: int) -> None:
    log.info(
        "tokenized %d rows: kept %d, dropped %d (prompt fills max_length=%d), %d responses truncated",
        rows, kept, dropped, max_length, truncated,
    )


def check_chat_tokenizer(tokenizer) -> None:
    """A tokenizer that can format SFT rows: it has an EOS token and a chat template."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id: cannot end responses with EOS")
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; set one (e.g. ChatML) before formatting")


def fingerprint_rows(rows: list[dict], cfg: DataConfig) -> str:
    """Content hash of the rows and the formatting settings (the data part of the prior cache key)."""
    h = hashlib.sha256(json.dumps(asdict(cfg) | {"path": None}, sort_keys=True).encode())
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()
