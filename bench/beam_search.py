"""How much faster is `constrained_beam_search` than `model.generate` + `prefix_allowed_tokens_fn`?

SmolLM2-135M grown by a synthetic 10k-item catalog (levels 256/256/256/K, code
tokens initialised with `init="mean"`), chat prompts of ~100 tokens (a history of
semantic IDs with titles), beam 20, top-20. Both decoders run on the same model
in one process, at batch 1 and batch 16, and the table reports users/s, the speed
ratio, how often both return the same top-K set, and the share of decode time
(everything after the prefill) spent building and applying the trie mask.

    .venv/bin/python bench/beam_search.py [--users 16] [--dtype fp32|bf16] [--skip-reference]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from genrec.decoding.beam_search import left_pad

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "classic wireless compact stainless organic vintage premium leather portable ceramic deluxe "
    "kitchen garden travel office outdoor camera speaker blender jacket novel lamp kettle mug "
    "headphones backpack notebook puzzle guitar candle"
).split()


def synthetic_catalog(n_items: int, last_level: int, seed: int = 0):
    """Random unique 4-level codes with made-up product titles."""
    from genrec.tokenization.catalog import Catalog

    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, size, 2 * n_items) for size in (256, 256, 256, last_level)]
    codes = np.unique(np.stack(draws, 1), axis=0)  # sorted and unique; shuffled below
    codes = codes[rng.permutation(len(codes))[:n_items]]
    titles = [" ".join(rng.choice(WORDS, 3).tolist()).title() for _ in range(n_items)]
    return Catalog([f"item{i}" for i in range(n_items)], codes, [256, 256, 256, last_level], titles, [""] * n_items)


def prompts_for(tokenizer, catalog, n_users: int, seed: int = 1) -> list[list[int]]:
    """Chat prompts of about 100 tokens: a short instruction and a history of IDs with titles."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        history = rng.choice(len(catalog), int(rng.integers(5, 9)), replace=False)
        lines = "; ".join(f"{catalog.sid(i)} {catalog.titles[i]}" for i in history)
        messages = [
            {"role": "system", "content": "You are a recommender system. Answer with one item ID."},
            {"role": "user", "content": f"I recently bought: {lines}. What should I buy next?"},
        ]
        out.append(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
    return out


def run(decoders: dict, prompts: list[list[int]], batch: int, pad_id: int, repeats: int) -> tuple[dict, dict]:
    """Seconds per decoder for all prompts in chunks of ``batch``, and each decoder's rankings.

    The decoders take turns on every chunk, so a burst of load from other jobs on a
    shared machine hits both rather than whichever happened to be running; with
    ``repeats > 1`` each chunk keeps its fastest time.
    """
    seconds = {name: 0.0 for name in decoders}
    ranked: dict[str, list] = {name: [] for name in decoders}
    for start in range(0, len(prompts), batch):
        ids, mask = left_pad(prompts[start : start + batch], pad_id)
        best = {name: float("inf") for name in decoders}
        for rep in range(repeats):
            for name, decode in decoders.items():
                t0 = time.perf_counter()
                out = decode(ids, mask)
                best[name] = min(best[name], time.perf_counter() - t0)
                if rep == 0:
                    ranked[name].extend(out)
        for name in decoders:
            seconds[name] += best[name]
    return seconds, ranked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--skip-reference", action="store_true", help="time only constrained_beam_search")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--last-level", type=int, default=8, help="codes at the 4th (disambiguation) level")
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=1, help="time each chunk this often, keep the fastest")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genrec.decoding.beam_search import constrained_beam_search, generate_reference
    from genrec.tokenization.trie import ItemTrie
    from genrec.tokenization.vocab import resize_model_for_catalog
    from genrec.models.base_lm import prepare_smollm2

    folder = prepare_smollm2()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    catalog = synthetic_catalog(args.items, args.last_level)
    resize_model_for_catalog(model, tok, catalog, init="mean")
    model.to(dtype)
    trie = ItemTrie(catalog.token_ids(tok), vocab_size=len(tok))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = prompts_for(tok, catalog, args.users)
    lengths = [len(p) for p in prompts]
    print(
        f"model SmolLM2-135M {args.dtype}, {len(catalog)} items, trie depth {trie.depth}, "
        f"{args.users} users, prompt tokens {min(lengths)}-{max(lengths)} (mean {np.mean(lengths):.0f}), "
        f"beams {args.beams}, top-{args.top_k}, {torch.get_num_threads()} threads\n"
    )

    timings: dict[str, float] = {}

    def fast(ids, mask):
        return constrained_beam_search(model, ids, mask, trie, args.beams, args.top_k, timings=timings)

    def slow(ids, mask):
        return generate_reference(model, ids, mask, trie, args.beams, args.top_k, eos_token_id=tok.eos_token_id)

    decoders = {"fast": fast} if args.skip_reference else {"fast": fast, "slow": slow}
    # warm-up (first-call allocations, lazy inits) outside the timings
    run(decoders, prompts[:1], 1, pad_id, 1)

    rows = []
    for batch in args.batches:
        timings.clear()
        seconds, ranked = run(decoders, prompts, batch, pad_id, args.repeats)
        # timings add up every repeat; as shares of the fast decoder's own time they stay comparable
        row = {
            "batch": batch,
            "fast": args.users / seconds["fast"],
            "mask": timings["mask"] / timings["decode"],
            "prefill": timings["prefill"] / (timings["prefill"] + timings["decode"]),
        }
        if not args.skip_reference:
            r_fast, r_slow = ranked["fast"], ranked["slow"]
            row["slow"] = args.users / seconds["slow"]
            row["same_set"] = np.mean([{i for i, _ in a} == {i for i, _ in b} for a, b in zip(r_fast, r_slow)])
            row["top1"] = np.mean([bool(a) and bool(b) and a[0][0] == b[0][0] for a, b in zip(r_fast, r_slow)])
        rows.append(row)

    print(
        "| batch | constrained_beam_search users/s | generate users/s | speed-up | same top-K set | same top-1 "
        "| prefill share | mask share of decode |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        slow_s = f"{r['slow']:.2f}" if "slow" in r else "-"
        ratio = f"{r['fast'] / r['slow']:.1f}x" if "slow" in r else "-"
        same = f"{r['same_set']:.0%}" if "slow" in r else "-"
        top1 = f"{r['top1']:.0%}" if "slow" in r else "-"
        print(
            f"| {r['batch']} | {r['fast']:.2f} | {slow_s} | {ratio} | {same} | {top1} "
            f"| {r['prefill']:.0%} | {r['mask']:.1%} |"
        )


if __name__ == "__main__":
    main()
