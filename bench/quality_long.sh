#!/bin/bash
# One ~80-min Beauty run with the history loss (windows) on the semantic IDs of another run, then the 2,000-user test eval:
#   bench/quality_long.sh SRC_RUN EMBED_SOURCE NAME STEPS [-s overrides]
# SRC_RUN gives data/ and tokenize/ (copied, so the IDs are identical); EMBED_SOURCE (text|collab|both) must be the one
# SRC_RUN was tokenized with, so the config hash of the copied stages matches.
src=$1; source=$2; name=$3; steps=$4; shift 4
d=runs/$name
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python bench/quality_jobs.py copy-stages $src $d || exit 1
O=(-s run_dir=$d -s tokenize.embedding.source=$source -s train.max_steps=$steps -s train.max_minutes=80 -s train.eval_every=$((steps/4)) -s train.save_every=$((steps/4)) -s train.history_loss=1.0 -s train.next_item_examples=windows "$@")
.venv/bin/python bench/quality_jobs.py train configs/beauty-scratch.yaml "${O[@]}" > $d/train.log 2>&1 || exit 1
.venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 2000 --seed 0 > $d/eval_u2000.log 2>&1
.venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 2000 --seed 0 --exclude-seen > $d/eval_u2000_xseen.log 2>&1
