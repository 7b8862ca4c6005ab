#!/bin/bash
# demo-set rows (scratch + history loss, SASRec-CE 3 seeds, popularity) and the Beauty 10-min text-alignment ablation
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
d=runs/demo-hl
D=(-s run_dir=$d -s model.name=scratch -s train.finetune=full -s train.lr=0.003 -s train.batch_size=64 -s train.history_loss=1.0 -s train.next_item_examples=windows -s train.max_steps=1000 -s train.max_minutes=15 -s train.anneal_by_time=true -s train.eval_every=250 -s train.save_every=250 -s train.eval_users=300 -s eval.num_beams=20)
mkdir -p $d
.venv/bin/genrec data prepare configs/demo.yaml "${D[@]}" > $d/prepare.log 2>&1 || exit 1
.venv/bin/genrec tokenize configs/demo.yaml "${D[@]}" > $d/tokenize.log 2>&1 || exit 1
.venv/bin/python bench/quality_jobs.py popularity configs/demo.yaml -s run_dir=$d --max-users 2000 > $d/pop.log 2>&1
for s in 0 1 2; do .venv/bin/python bench/quality_jobs.py sasrec configs/demo.yaml -s run_dir=$d --seed $s --max-users 2000 -s sasrec.epochs=30 -s sasrec.num_threads=1 > $d/sasrec$s.log 2>&1; done
.venv/bin/python bench/quality_jobs.py train configs/demo.yaml "${D[@]}" > $d/train.log 2>&1 || exit 1
.venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 2000 --seed 0 > $d/eval_u2000.log 2>&1
# Beauty, 10 min: text-only IDs + history loss (windows) + the text_to_id alignment task (without it: runs/beauty-hl-10min-text)
a=runs/beauty-hl-10min-text-align
.venv/bin/python bench/quality_jobs.py copy-stages runs/beauty-hl-10min-text $a || exit 1
A=(-s run_dir=$a -s tokenize.embedding.source=text -s train.max_steps=480 -s train.max_minutes=25 -s train.eval_every=240 -s train.save_every=240 -s train.history_loss=1.0 -s train.next_item_examples=windows -s "train.tasks={next_item: 1.0, text_to_id: 1.0, id_to_text: 0.0, conversational: 0.0}")
.venv/bin/python bench/quality_jobs.py train configs/beauty-scratch.yaml "${A[@]}" > $a/train.log 2>&1 || exit 1
.venv/bin/python bench/quality_jobs.py genrec-eval $a --max-users 2000 --seed 0 > $a/eval_u2000.log 2>&1
