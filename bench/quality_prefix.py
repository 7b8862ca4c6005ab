"""Where a genrec run loses the target: share of test users whose top-1 / top-10 matches the
first 1..4 codes of the target semantic ID, plus history items among the recommendations.
Reads RUN/eval/test_recommendations.jsonl (the last `genrec evaluate`), RUN/data, RUN/tokenize.

    .venv/bin/python bench/quality_prefix.py runs/beauty-scratch
"""
import json, sys, re
import pandas as pd
from genrec.data import PreparedDataset
run = sys.argv[1]
ds = PreparedDataset.load(f"{run}/data")
tgt = {u: t for u, _, t in ds.split("test")}
cat = pd.read_parquet(f"{run}/tokenize/catalog.parquet")
sid = dict(zip(cat.item_id, cat.sid))
rows = [json.loads(l) for l in open(f"{run}/eval/test_recommendations.jsonl")]
def codes(s): return re.findall(r"<[^>]+>", s)
n = len(rows)
for lv in range(1, 5):
    hit1 = sum(codes(r["items"][0]["sid"])[:lv] == codes(sid[tgt[r["user_id"]]])[:lv] for r in rows) / n
    hit10 = sum(any(codes(it["sid"])[:lv] == codes(sid[tgt[r["user_id"]]])[:lv] for it in r["items"]) for r in rows) / n
    print(f"first {lv} code(s) of the target: top-1 {hit1:.3f}, any of top-10 {hit10:.3f}")
# how concentrated: distinct first codes in the top-10 per user
import statistics
print("mean distinct first codes in a top-10:", statistics.mean(len({codes(it['sid'])[0] for it in r['items']}) for r in rows))
# target in history (repeat purchase)?
hist = {u: set(h) for u, h, _ in ds.split("test")}
print("targets already in history:", sum(tgt[u] in hist[u] for u in tgt) / len(tgt))
seen = sum(sum(it["item_id"] in hist[r["user_id"]] for it in r["items"]) for r in rows)
print("share of top-10 slots that are history items:", seen / (10 * n))
