#!/bin/bash
# SmolLM2-135M LoRA on Beauty at the budget left in this session: 45 min of training, schedule annealed by time
d=runs/beauty-smollm2-lora
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python bench/quality_jobs.py copy-stages runs/beauty-hl-10min-text $d || exit 1
O=(-s run_dir=$d -s tokenize.embedding.source=text -s tokenize.quantizer.num_threads=1 -s model.name=smollm2 -s train.finetune=lora -s train.lora_r=16 -s train.lr=0.002 -s train.batch_size=16 -s "train.tasks={next_item: 1.0, text_to_id: 0.0, id_to_text: 0.0, conversational: 0.0}" -s train.history_loss=1.0 -s train.next_item_examples=windows -s train.max_steps=3000 -s train.max_minutes=45 -s train.anneal_by_time=true -s train.eval_every=0 -s train.save_every=100 -s train.eval_users=300 -s eval.num_beams=20)
.venv/bin/python bench/quality_jobs.py train configs/beauty.yaml "${O[@]}" > $d/train.log 2>&1 || exit 1
# SmolLM2 decodes at ~1.2 s/user (beam 20, 2 threads): 500 users (the first 500 of the 2,000-user sample)
OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 .venv/bin/python bench/quality_jobs.py genrec-eval $d --max-users 500 --seed 0 --batch-size 32 > $d/eval_u500.log 2>&1
