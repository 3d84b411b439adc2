#!/usr/bin/env bash
# Baseline table for docs/benchmarks.md: full ranking, 3 seeds, hyperparameters tuned on the
# validation split of seed 0 (default grids, see mgrec/tuning.py) and reused for seeds 1-2.
# lastfm-2k has no interaction timestamps, so it has no temporal split.
set -euo pipefail
cd "$(dirname "$0")/.."
MGREC=${MGREC:-.venv/bin/mgrec}
export MGREC_DATA=${MGREC_DATA:-../shared/data}
$MGREC benchmark --datasets ml-100k,lastfm-2k,ciao --models pop,itemknn,ease,bprmf \
    --split random --seeds 3 --out bench/results/baselines-random.json
$MGREC benchmark --datasets ml-100k,ciao --models pop,itemknn,ease,bprmf \
    --split temporal --seeds 3 --out bench/results/baselines-temporal.json
