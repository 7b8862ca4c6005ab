"""Where genrec computes and in which precision: the one place that decides both.

Device: every config section that runs a model has a ``device`` field, ``"auto"`` by default:
the GPU where torch sees one, else the CPU. :func:`compute_device` turns that field into a
:class:`torch.device`, so training, validation, evaluation and the SASRec fits move to a GPU
without a config change, and a laptop runs the same config on its CPU.

Precision: bf16 autocast halves the cost of a matmul only on CPUs that run bf16 natively (AVX512-BF16,
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

from genrec.errors import InputError

logger = logging.getLogger(__name__)

#: bf16 is kept while a bf16 matmul takes at most this many times as long as the fp32 one.
#: Native bf16 runs ~0.5x, emulated bf16 10-50x, so the cut is far from both.
SLOWDOWN_LIMIT = 2.0


def prefer_bf16(bf16_seconds: float, fp32_seconds: float, limit: float = SLOWDOWN_LIMIT) -> bool:
    """Whether bf16 autocast pays, given the time of the same matmul in bf16 and in fp32."""
    return bf16_seconds <= limit * fp32_seconds


def _matmul_seconds(dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    t = time.perf_counter()
    a @ b
    return time.perf_counter() - t


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_fast(n: int = 256, trials: int = 5) -> bool:
    """Time an n^3 matmul in bf16 and fp32 on this CPU (~0.2 s where bf16 is emulated); cached per process.

    Each precision keeps its fastest of ``trials`` runs, taken in turns: on a busy machine one
    run can be preempted for longer than the matmul itself, and a single timing then decides
    the wrong way (fp32 on a native-bf16 CPU, or emulated bf16 at 10-50x the cost).
    """
    for dtype in (torch.bfloat16, torch.float32):
        _matmul_seconds(dtype, n)  # warm-up: first calls pick kernels
    bf16, fp32 = float("inf"), float("inf")
    for _ in range(trials):
        bf16 = min(bf16, _matmul_seconds(torch.bfloat16, n))
        fp32 = min(fp32, _matmul_seconds(torch.float32, n))
    return prefer_bf16(bf16, fp32)


#: What a config's ``device`` field may say.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def compute_device(requested: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device a config's ``device`` field names: ``"auto"`` is the GPU where torch sees one, else the CPU.

    ``local_rank`` (a multi-process run's rank on this machine) picks that rank's GPU for
    ``"auto"`` and ``"cuda"``. Asking for a GPU that torch does not see is an
    :class:`~genrec.errors.InputError` that names the fix.
    """
    name = (requested or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise InputError(f"device {requested!r} is not one genrec runs on", f"use one of {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        raise InputError(
            f"device {requested!r} was asked for, but torch sees no GPU here (torch {torch.__version__})",
            "set the device to auto or cpu, or install a CUDA build of torch",
        )
    index = int(name[5:]) if ":" in name else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise InputError(
            f"device {requested!r}: torch sees {torch.cuda.device_count()} GPU(s)",
            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
        )
    return torch.device("cuda", index)


def use_bf16(requested: bool, device: str | torch.device = "cpu") -> bool:
    """The bf16 setting to run with: ``requested``, except where bf16 is slow (then fp32, warned once).

    A GPU runs bf16 where it supports it (Ampere and later); a CPU where :func:`cpu_bf16_is_fast`.
    """
    if not requested:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    if cpu_bf16_is_fast():
        return True
    _warn_fallback()
    return False


def autocast(requested: bool, device: str | torch.device = "cpu") -> torch.autocast:
    """The bf16 autocast context every genrec forward runs under: on only where :func:`use_bf16` says so."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(requested, device))


@functools.lru_cache(maxsize=None)
def _warn_fallback() -> None:
    logger.warning(
        "bf16 was requested but this CPU has no fast bf16 (a bf16 matmul is over %gx slower than "
        "fp32 here): running in fp32. Set train.bf16 / eval.bf16 to false (or pass --fp32) to "
        "silence this.",
        SLOWDOWN_LIMIT,
    )
