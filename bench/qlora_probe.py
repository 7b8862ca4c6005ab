"""Do LoRA gradients flow through bitsandbytes 4-bit layers on this device (CPU or CUDA)?

Fits the same 8 short examples of SmolLM2-135M for a few steps with (a) LoRA over the fp32
base and (b) LoRA over an nf4 4-bit base (QLoRA), same seed, same LoRA init, and prints one
JSON line per mode: the loss curve, the LoRA gradient norms and seconds per step. If (b)'s
loss falls like (a)'s, `train.finetune: qlora` learns on this device (docs/benchmarks.md has
a measured CPU run).

    .venv/bin/python bench/qlora_probe.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def run(mode: str, steps: int, device: str) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from genrec.models.base_lm import prepare_smollm2

    folder = prepare_smollm2()
    tok = AutoTokenizer.from_pretrained(folder)
    kwargs = {"dtype": torch.float32}
    if mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if mode != "qlora":
        model.to(device)
    torch.manual_seed(0)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"
        ),
    )
    texts = [
        f"The item number {i} is a {c} thing you can buy."
        for i, c in enumerate(["red", "blue", "green", "small", "large", "cheap", "fancy", "odd"])
    ]
    batch = tok(texts, return_tensors="pt", padding=True).to(device)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses, grads = [], []
    t = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            loss = model(**batch, labels=labels).loss
        loss.backward()
        grads.append(
            float(
                torch.sqrt(
                    sum(
                        (p.grad.float() ** 2).sum()
                        for p in model.parameters()
                        if p.requires_grad and p.grad is not None
                    )
                )
            )
        )
        opt.step()
        opt.zero_grad()
        losses.append(round(float(loss), 4))
    return {
        "mode": mode,
        "device": device,
        "losses": losses,
        "lora_grad_norms": [round(g, 4) for g in grads],
        "loss_drop": round(losses[0] - losses[-1], 4),
        "s_per_step": round((time.perf_counter() - t) / steps, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per mode")
    args = ap.parse_args()
    torch.set_num_threads(2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for mode in ("lora", "qlora"):
        print(json.dumps(run(mode, args.steps, device)))


if __name__ == "__main__":
    main()
