#!/bin/bash
# 10-min-budget ablation of the item-embedding source with the history loss (windows), same 480 steps as pilotB
src=$1; d=runs/beauty-hl-10min-$src
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
O=(-s run_dir=$d -s tokenize.embedding.source=$src -s train.max_steps=480 -s train.max_minutes=25 -s train.eval_every=240 -s train.save_every=240 -s train.history_loss=1.0 -s train.next_item_examples=windows)
.venv/bin/genrec tokenize configs/beauty-scratch.yaml "${O[@]}" > $d/tokenize.log 2>&1 || exit 1
.venv/bin/python bench/quality_jobs.py train configs/beauty-scratch.yaml "${O[@]}" > $d/train.log 2>&1 || exit 1
.venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 2000 --seed 0 > $d/eval_u2000.log 2>&1
