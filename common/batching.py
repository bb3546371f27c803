"""Right-padding variable-length token lists into one tensor (collators, the prior, the benchmarks)."""

from __future__ import annotations

import torch


def pad(seqs: list[list], value, device=None, dtype=torch.long) -> torch.Tensor:
    """[len(seqs), longest] with each row right-padded by `value`.

    >>> pad([[1, 2, 3], [4]], 0).tolist()
    [[1, 2, 3], [4, 0, 0]]
    """
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=dtype, device=device)
