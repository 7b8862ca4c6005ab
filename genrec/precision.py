"""When bf16 autocast on the CPU is worth it: the one place that decides.

bf16 autocast halves the cost of a matmul only on CPUs that run bf16 natively (AVX512-BF16,
AMX, Arm BF16). Elsewhere oneDNN emulates it, and an emulated bf16 matmul is tens of times
slower than fp32. So ``bf16: true`` in a config means "bf16 where it is fast": every autocast
in genrec is :func:`autocast`, which asks :func:`use_bf16`, which times one small matmul in each
precision the first time it is asked and falls back to fp32, with a logged warning, where bf16
is slower.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

logger = logging.getLogger(__name__)

#: bf16 is kept while a bf16 matmul takes at most this many times as long as the fp32 one.
#: Native bf16 runs ~0.5x, emulated bf16 10-50x, so the cut is far from both.
SLOWDOWN_LIMIT = 2.0


def prefer_bf16(bf16_seconds: float, fp32_seconds: float, limit: float = SLOWDOWN_LIMIT) -> bool:
    """Whether bf16 autocast pays, given the time of the same matmul in bf16 and in fp32."""
    return bf16_seconds <= limit * fp32_seconds


def _matmul_seconds(dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up: first calls pick kernels
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - t) / reps


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_fast(n: int = 256, reps: int = 3) -> bool:
    """Time an n^3 matmul in bf16 and fp32 on this CPU (~0.1 s where bf16 is emulated); cached per process."""
    return prefer_bf16(_matmul_seconds(torch.bfloat16, n, reps), _matmul_seconds(torch.float32, n, reps))


def use_bf16(requested: bool, device: str | torch.device = "cpu") -> bool:
    """The bf16 setting to run with: ``requested``, except on a CPU without fast bf16 (then fp32, warned once)."""
    if not requested:
        return False
    if torch.device(device).type != "cpu":
        return True
    if cpu_bf16_is_fast():
        return True
    _warn_fallback()
    return False


def autocast(requested: bool) -> torch.autocast:
    """The CPU bf16 autocast context every genrec forward runs under: on only where :func:`use_bf16` says so."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(requested))


@functools.lru_cache(maxsize=None)
def _warn_fallback() -> None:
    logger.warning(
        "bf16 was requested but this CPU has no fast bf16 (a bf16 matmul is over %gx slower than "
        "fp32 here): running in fp32. Set train.bf16 / eval.bf16 to false (or pass --fp32) to "
        "silence this.",
        SLOWDOWN_LIMIT,
    )
