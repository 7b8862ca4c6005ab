#!/bin/bash
# One ~80-min Beauty run with the history loss (windows) on the semantic IDs of another run, then the 2,000-user test eval:
#   bench/quality_long.sh SRC_RUN NAME STEPS [-s overrides]
# SRC_RUN gives data/ and tokenize/ (copied, so the IDs are identical). Training reads the copied IDs, not the
# tokenize config; the embedding source and collab method are taken from SRC_RUN's manifest so the new run's
# config.yaml names them right.
src=$1; name=$2; steps=$3; shift 3
d=runs/$name
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}   # THREADS=2 when it runs alone
read -r embed_source collab_method < <(.venv/bin/python -c "import json,sys; t=json.load(open(sys.argv[1]))['stages']['tokenize']; print(t['embedding_source'], t.get('collab_method') or 'ppmi')" $src/manifest.json) || exit 1
.venv/bin/python bench/quality_jobs.py copy-stages $src $d || exit 1
O=(-s run_dir=$d -s tokenize.embedding.source=$embed_source -s tokenize.embedding.collab_method=$collab_method -s train.max_steps=$steps -s train.max_minutes=80 -s train.eval_every=$((steps/4)) -s train.save_every=$((steps/4)) -s train.history_loss=1.0 -s train.next_item_examples=windows "$@")
.venv/bin/python bench/quality_jobs.py train configs/beauty-scratch.yaml "${O[@]}" > $d/train.log 2>&1 || exit 1
.venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 2000 --seed 0 > $d/eval_u2000.log 2>&1
.venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 2000 --seed 0 --exclude-seen > $d/eval_u2000_xseen.log 2>&1
