"""A ChatML tokenizer trained on the spot, for tests and benchmarks that must fetch nothing.

A byte-level BPE learned from a few hundred synthetic lines, with the special tokens and chat
template of Qwen's ChatML: `<|im_start|>role\\ncontent<|im_end|>\\n`, EOS `<|im_end|>`, pad
`<|endoftext|>`. Paired with a randomly initialised model it exercises every code path that needs a
real tokenizer (chat formatting, response masks, EOS) without a hub download.
"""

from __future__ import annotations

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def chatml_tokenizer(texts: list[str], vocab_size: int):
    """A PreTrainedTokenizerFast with at most `vocab_size` ids, trained on `texts` (the role names
    are added so chat turns tokenize compactly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([*texts, "user assistant system\n"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None)
    tokenizer.chat_template = CHATML
    return tokenizer
