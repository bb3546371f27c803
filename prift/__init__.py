"""PriFT: supervised fine-tuning with token weights from a frozen pretrained reference.

signals  per-token signals (log q, PriFT-mass u, entropies), chunked over the vocabulary
weights  the rules x (online / prior signal) and the named methods (DFT, PriFT, EAFT, ASFT, ProFit, ...)
anchor   ASFT's KL(q || p) anchor over the full vocabulary, from the resident reference
data     SFT rows -> chat-templated token ids with a response-only mask (every method's training rows)
reference  the frozen reference as a scorer: per-token log q and u of a causal LM, batch by batch
prior    the prior stage: score the data once with the reference, cache the signals
loss     the weighted NLL, normalised over the accumulated batch's response tokens
trainer  PriftTrainer (a TRL SFTTrainer) and its collator
sft      the SFT stage: resumable training ending in a plain Hugging Face folder
heldout  each evaluated model's unweighted NLL on held-out demonstrations (the overfitting gauge)
"""
