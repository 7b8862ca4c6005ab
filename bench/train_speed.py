"""Training speed: s/step, examples/s and achieved FLOP/s as a share of the measured bf16 matmul peak.

Runs the real trainer pieces (prompts, collate, answer-only loss, fused AdamW) on the
prepared demo run for each backbone, in one process, one after the other:

    .venv/bin/python bench/train_speed.py --run runs/demo [--steps 8] [--batch 16]

FLOPs per step are counted by torch's FlopCounterMode on one step (forward + backward).

``--recipe`` times the recipe's whole optimizer step instead (`Trainer.train_step`: prompts,
collate, the teacher's targets, answer + history + distillation losses, AdamW) for the config
as it is and with each ``--variant`` of overrides, at one thread, the variants' steps
interleaved so that they share the machine's load, and appends the seconds per step and their
ratio to the recipe's to bench/results/train_step.json:

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_speed.py --recipe --config configs/beauty-scratch.yaml \
        --run runs/headline-beauty-s0 --steps 20 --variant train.group_by_length=true

The run needs `data` and `tokenize` (its teacher); nothing is written to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from genrec.config import load_config
from genrec.precision import autocast
from genrec.training.losses import answer_loss, collate, to_device
from genrec.training.trainer import Trainer


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench(config: str, run: str, overrides: list[str], steps: int, batch: int) -> dict:
    cfg = load_config(config, [f"run_dir={run}", f"train.batch_size={batch}", *overrides])
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    model = trainer.model
    model.train()
    pad = trainer.pad_id

    def one(step: int):
        batch_ = to_device(collate(trainer.batch_for(step, 0), pad, cfg.train.max_seq_len), trainer.device)
        with autocast(trainer.bf16, trainer.device):
            loss = answer_loss(model, batch_)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return batch_

    one(0)  # warm-up
    with FlopCounterMode(display=False) as fc:
        b = one(1)
    flops = fc.get_total_flops()
    t = time.perf_counter()
    tokens = 0
    for s in range(2, 2 + steps):
        tokens += int(one(s)["attention_mask"].sum())
    dt = (time.perf_counter() - t) / steps
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "s_per_step": dt,
        "examples_per_s": batch / dt,
        "tokens_per_step": tokens / steps,
        "seq_len": b["input_ids"].shape[1],
        "flops_per_step": flops,
        "flops_per_s": flops / dt,
        "trainable": trainable,
        "params": sum(p.numel() for p in model.parameters()),
    }


def recipe_steps(config: str, run: str, variants: list[list[str]], steps: int) -> list[dict]:
    """Seconds per ``Trainer.train_step`` of the config (``variants[0]`` = []) and each variant,
    timed round-robin over steps 1..steps after one warm-up step each."""
    from genrec.training.checkpoint import TrainState

    trainers = []
    for overrides in variants:
        cfg = load_config(config, [f"run_dir={run}", "train.num_threads=1", *overrides])
        trainer = Trainer(cfg, progress=False)
        trainer.setup()
        trainer.model.train()
        trainers.append(trainer)
    seconds = [[] for _ in variants]
    tokens = [0 for _ in variants]
    for step in range(steps + 1):
        for n, trainer in enumerate(trainers):
            t = time.perf_counter()
            trainer.train_step(TrainState(step=step))
            trainer.optimizer.zero_grad(set_to_none=True)
            if step:  # step 0 warms up
                seconds[n].append(time.perf_counter() - t)
                tokens[n] += sum(len(ex.input_ids) for ex in trainer.batch_for(step, 0))
    base = sum(seconds[0]) / steps
    return [
        {
            "overrides": overrides,
            "s_per_step": round(sum(s) / steps, 3),
            "ratio_to_recipe": round(sum(s) / steps / base, 3),
            "tokens_per_step": round(tokens[n] / steps),
        }
        for n, (overrides, s) in enumerate(zip(variants, seconds))
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", action="store_true", help="time the recipe's whole step and its --variant(s)")
    ap.add_argument("--variant", action="append", default=[], help="space-separated overrides (with --recipe)")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--run", default="runs/demo")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    if args.recipe:
        from serving import _record

        torch.set_num_threads(1)
        rows = recipe_steps(args.config, args.run, [[], *[v.split() for v in args.variant]], args.steps)
        for r in rows:
            name = " ".join(r["overrides"]) or "the config"
            print(f"{name:70s} {r['s_per_step']:.2f} s/step  x{r['ratio_to_recipe']:.2f}")
        out = Path(__file__).resolve().parent / "results" / "train_step.json"
        previous = json.loads(out.read_text()) if out.is_file() else []
        record = {**_record(), "config": args.config, "steps": args.steps, "rows": rows}
        out.write_text(json.dumps(previous + [record], indent=1) + "\n")
        return
    torch.set_num_threads(2)
    peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    rows = {
        "SmolLM2-135M LoRA r16 (bf16 autocast)": ["model.name=smollm2", "train.finetune=lora"],
        "SmolLM2-135M full fine-tune (bf16 autocast)": ["model.name=smollm2", "train.finetune=full"],
        "scratch Llama (4x128) full (bf16 autocast)": ["model.name=scratch", "train.finetune=full"],
    }
    print(f"bf16 matmul peak {peak_bf16 / 1e12:.2f} TFLOP/s, fp32 {peak_fp32 / 1e12:.2f} TFLOP/s (2 threads, 2048^3)\n")
    print(
        "| backbone | params (trainable) | s/step | examples/s | tokens/step | GFLOP/step | TFLOP/s "
        "| share of bf16 peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, ov in rows.items():
        r = bench(args.config, args.run, ov, args.steps, args.batch)
        print(
            f"| {name} | {r['params'] / 1e6:.1f}M ({r['trainable'] / 1e6:.2f}M) | {r['s_per_step']:.2f} | "
            f"{r['examples_per_s']:.1f} | {r['tokens_per_step']:.0f} | {r['flops_per_step'] / 1e9:.0f} | "
            f"{r['flops_per_s'] / 1e12:.3f} | {r['flops_per_s'] / peak_bf16:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
