#!/bin/bash
# ~75-min Beauty run with text-only semantic IDs + history loss (windows): bench/quality_text_ids.sh NAME STEPS [-s overrides]
# (data/ and tokenize/ from runs/beauty-hl-10min-text, made by bench/quality_ablation_source.sh text)
exec bench/quality_long.sh runs/beauty-hl-10min-text "$@"
