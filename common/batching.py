"""Right-padding variable-length token lists into one tensor, and grouping them into length batches."""

from __future__ import annotations

import torch


def pad(seqs: list[list], value, device=None, dtype=torch.long) -> torch.Tensor:
    """[len(seqs), longest] with each row right-padded by `value`.

    >>> pad([[1, 2, 3], [4]], 0).tolist()
    [[1, 2, 3], [4, 0, 0]]
    """
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=dtype, device=device)


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays within batch_tokens
    (a sequence longer than batch_tokens gets a batch of its own).

    >>> length_batches([5, 1, 4, 2], batch_tokens=8)
    [[1, 3], [2], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
