"""`make demo`: the whole pipeline on the bundled MovieTweetings set, end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from genrec.config import GenrecConfig


def run_demo(cfg: GenrecConfig, config_path: Path | str) -> dict:
    """prepare -> tokenize -> fine-tune -> evaluate (vs popularity) -> print a few users."""
    from genrec.data import prepare_stage
    from genrec.evaluation.evaluate import evaluate_run, format_table
    from genrec.tokenization.stage import tokenize_stage
    from genrec.training.trainer import Trainer

    timings: dict[str, float] = {}
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    t = time.perf_counter()
    ds = prepare_stage(cfg)
    timings["prepare"] = time.perf_counter() - t
    print(f"[1/4] data: {ds.n_users} users, {ds.n_items} items, {ds.n_interactions} interactions "
          f"({timings['prepare']:.1f} s)")

    t = time.perf_counter()
    catalog = tokenize_stage(cfg)
    timings["tokenize"] = time.perf_counter() - t
    report = json.loads((run / "tokenize" / "report.json").read_text())
    print(f"[2/4] semantic IDs: {len(catalog)} items, depth {catalog.depth}, levels {catalog.level_sizes}, "
          f"collisions before disambiguation {report['collision_rate']:.1%} ({timings['tokenize']:.1f} s)")

    t = time.perf_counter()
    state = Trainer(cfg).train()
    timings["train"] = time.perf_counter() - t
    print(f"[3/4] fine-tuned {cfg.model.name} ({cfg.train.finetune}): {state.step} steps, {state.stop_reason}; "
          f"best valid NDCG@10 {state.best_metric:.4f} ({timings['train'] / 60:.1f} min)")

    t = time.perf_counter()
    e = cfg.eval
    result = evaluate_run(run, "test", k=e.top_k, num_beams=e.num_beams, batch_size=e.batch_size,
                          max_users=e.max_users, seed=cfg.seed, bf16=e.bf16, exclude_seen=e.exclude_seen)
    timings["evaluate"] = time.perf_counter() - t
    print(f"[4/4] test split, {result['users']} users, beam {e.num_beams} ({timings['evaluate']:.1f} s):")
    print(format_table(result))
    g, p = result["genrec"], result["popularity"]
    verdict = ("beats" if g["recall@10"] > p["recall@10"] and g["ndcg@10"] > p["ndcg@10"] else "does not beat")
    print(f"\nAt this budget the fine-tuned model {verdict} popularity on Recall@10 and NDCG@10 "
          f"(invalid items: {g['invalid_rate']:.0%}).")
    _show_users(run, catalog, n=3)
    timings["total"] = sum(timings.values())
    (run / "demo_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"\ntotal {timings['total'] / 60:.1f} min; everything is in {run}/")
    return result


def _show_users(run: Path, catalog, n: int) -> None:
    from genrec.data import PreparedDataset

    ds = PreparedDataset.load(run / "data")
    histories = {u: (h, t) for u, h, t in ds.split("test")}
    index = ds.item_index()
    with open(run / "eval" / "test_recommendations.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(n), f)]
    for row in rows:
        hist, target = histories[row["user_id"]]
        print(f"\nuser {row['user_id']} watched (latest last):")
        for item in hist[-5:]:
            print(f"    {catalog.titles[index[item]]}")
        print(f"  held-out next: {catalog.titles[index[target]]}")
        print("  recommended:")
        for r in row["items"][:5]:
            mark = "  <- hit" if r["item_id"] == target else ""
            print(f"    {r['title']}  {r['sid']}  score {r['score']:.2f}{mark}")
