#!/bin/bash
# ~75-min Beauty run with text-only semantic IDs + history loss (windows): bench/quality_text_ids.sh NAME STEPS [-s overrides]
# (data/ and tokenize/ from runs/beauty-hl-10min-text, made by bench/quality_ablation_source.sh text)
name=$1; steps=$2; shift 2
d=runs/$name
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python bench/quality_jobs.py copy-stages runs/beauty-hl-10min-text $d || exit 1
O=(-s run_dir=$d -s tokenize.embedding.source=text -s train.max_steps=$steps -s train.max_minutes=80 -s train.eval_every=$((steps/4)) -s train.save_every=$((steps/4)) -s train.history_loss=1.0 -s train.next_item_examples=windows "$@")
.venv/bin/python bench/quality_jobs.py train configs/beauty-scratch.yaml "${O[@]}" > $d/train.log 2>&1 || exit 1
.venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 2000 --seed 0 > $d/eval_u2000.log 2>&1
.venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 2000 --seed 0 --exclude-seen > $d/eval_u2000_xseen.log 2>&1
