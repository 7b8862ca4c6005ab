"""Beam-width probe for the quality benchmark: one genrec run, a fixed sample of test users
(split_rows seed 7), several beam widths; prints JSON lines and writes nothing into the run folder.

    OMP_NUM_THREADS=1 .venv/bin/python bench/quality_beam.py runs/beauty-scratch 500 10 20 40
"""
import json, sys, time
from genrec.data import PreparedDataset
from genrec.evaluation.evaluate import split_rows
from genrec.evaluation.metrics import evaluate_rankings
from genrec.precision import autocast
from genrec.serving.recommender import Recommender
run, n = sys.argv[1], int(sys.argv[2])
ds = PreparedDataset.load(f"{run}/data")
rec = Recommender.from_folder(f"{run}/model")
_, hist, tg = split_rows(ds, "test", n, 7)
for beams in map(int, sys.argv[3:]):
    t = time.perf_counter()
    with autocast(True):
        r = rec.recommend(hist, k=10, num_beams=beams, batch_size=32, progress=False)
    m = evaluate_rankings([[x.index for x in row] for row in r], tg, len(rec.catalog))
    print(json.dumps({"beams": beams, "users": n, "seconds": round(time.perf_counter() - t, 1),
                      **{k: round(v, 4) for k, v in m.items() if "@" in k}}), flush=True)
