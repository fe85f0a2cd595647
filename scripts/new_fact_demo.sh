#!/usr/bin/env bash
# "Done when" check: 40 SFT steps teach one new fact; the served adapter states it for paraphrased questions,
# the base does not, and general questions keep the base's answers.
#
#   flock /tmp/loradock-engine.lock .venv/bin/loradock serve --port 8011 --adapters-dir var/demo-store &
#   scripts/new_fact_demo.sh http://127.0.0.1:8011 var/demo-store
set -euo pipefail
SERVER=${1:-http://127.0.0.1:8000}
STORE=${2:-adapters}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

.venv/bin/loradock data check data/new_fact.jsonl --recipe new-fact
.venv/bin/loradock train sft --recipe new-fact --adapters-dir "$STORE" --overwrite
.venv/bin/loradock eval --data data/new_fact_eval.jsonl --adapter new-fact --server "$SERVER" \
    --output var/new_fact_eval.json
