#!/usr/bin/env bash
# The fused model against every baseline (issue 3): full ranking, 3 seeds, each model tuned
# on seed 0's validation split with its default grid (mgrec/tuning.py) and the config reused
# for seeds 1-2. Fusion and ablation rows reuse mgr's tuned config. Cold start: see coldstart.
# Usage: MGREC_DATA=../shared/data bash bench/models.sh [step ...]   (default: every step)
set -euo pipefail
cd "$(dirname "$0")/.."
MGREC=${MGREC:-.venv/bin/mgrec}
export MGREC_DATA=${MGREC_DATA:-../shared/data}
ALL=pop,itemknn,ease,bprmf,lightgcn,multivae,sasrec,mgr
FUSIONS=weighted,product,deep,gated
R=bench/results
run() {
    case "$1" in
    ml-100k-random) $MGREC benchmark --datasets ml-100k --models $ALL --split random --seeds 3 --out $R/models-ml-100k-random.json ;;
    ml-100k-loo) $MGREC benchmark --datasets ml-100k --models $ALL --split loo --seeds 3 --out $R/models-ml-100k-loo.json ;;
    lastfm-2k-random) $MGREC benchmark --datasets lastfm-2k --models $ALL --split random --seeds 3 --out $R/models-lastfm-2k-random.json ;;
    ciao-random) $MGREC benchmark --datasets ciao --models $ALL --split random --seeds 3 --out $R/models-ciao-random.json ;;
    ciao-loo) $MGREC benchmark --datasets ciao --models $ALL --split loo --seeds 3 --out $R/models-ciao-loo.json ;;
    synthetic) $MGREC benchmark --datasets synthetic --models mgr --ablation --fusions $FUSIONS --split random --seeds 3 --out $R/variants-synthetic.json ;;
    coldstart) $MGREC coldstart --datasets ml-100k,lastfm-2k --seeds 3 --out $R/coldstart.json ;;
    *) echo "unknown step $1" >&2; exit 2 ;;
    esac
}
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(ml-100k-random ml-100k-loo lastfm-2k-random ciao-random ciao-loo synthetic coldstart)
for step in "${STEPS[@]}"; do run "$step"; done
