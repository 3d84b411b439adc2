#!/usr/bin/env bash
# The fused model against the baselines (issue 3): full ranking, each model tuned on seed 0's
# validation split with its default grid (mgrec/tuning.py), the config reused for seeds 1-2.
# These are the exact commands behind docs/benchmarks.md ("The fused model"). Each was run with
# OMP_NUM_THREADS=1, two at a time on the 2-core machine, so seconds are contended.
# Usage: MGREC_DATA=../shared/data bash bench/models.sh [step ...]   (default: every step)
set -euo pipefail
cd "$(dirname "$0")/.."
MGREC=${MGREC:-.venv/bin/mgrec}
export MGREC_DATA=${MGREC_DATA:-../shared/data}
ALL=pop,itemknn,ease,bprmf,lightgcn,multivae,sasrec,mgr
R=bench/results
run() {
    case "$1" in
    ml-100k-random) $MGREC benchmark --datasets ml-100k --models $ALL --split random --seeds 3 --out $R/models-ml-100k-random.json ;;
    ml-100k-loo) $MGREC benchmark --datasets ml-100k --models $ALL --split loo --seeds 3 --out $R/models-ml-100k-loo.json ;;
    # pop, itemknn, ease and bprmf on lastfm-2k are the rows of bench/results/baselines-random.json
    # (bench/baselines.sh, the same protocol and code path); mgr keeps its ml-100k-tuned values
    lastfm-2k-random) $MGREC benchmark --datasets lastfm-2k --models lightgcn,mgr --split random --seeds 3 \
        --config '{"mgr": {"weight_decay": 1.0, "hist_dropout": 0.5}}' --out $R/models-lastfm-2k-random.json ;;
    # the fusion table: mgr's default config (no tuning) with each fusion; `mgr` = `mgr-gated`
    fusions-ml-100k-random) $MGREC benchmark --datasets ml-100k --models mgr --fusions weighted,product,deep,gated \
        --split random --seeds 3 --no-tune --out $R/fusions-ml-100k-random.json ;;
    fusions-ml-100k-loo) $MGREC benchmark --datasets ml-100k --models mgr --fusions weighted,product,deep,gated \
        --split loo --seeds 3 --no-tune --out $R/fusions-ml-100k-loo.json ;;
    ablation-ml-100k-random) $MGREC benchmark --datasets ml-100k --models mgr --ablation --split random --seeds 3 \
        --no-tune --out $R/ablation-ml-100k-random.json ;;
    ablation-synthetic) $MGREC benchmark --datasets synthetic --models mgr --ablation --split loo --seeds 3 --no-tune \
        --config '{"mgr": {"patience": 20, "epochs": 200}}' --out $R/ablation-synthetic-loo.json ;;
    coldstart) $MGREC coldstart --datasets ml-100k --seeds 1 --out $R/coldstart-ml-100k.json
               $MGREC coldstart --datasets lastfm-2k --seeds 1 --out $R/coldstart-lastfm-2k.json ;;
    # the fused model with the behaviour granularity's item-item part (item_item "auto", on for
    # set-mode histories), its default config (tuned on ml-100k validation), no search
    itemitem-ml-100k-random) $MGREC benchmark --datasets ml-100k --models mgr --split random --seeds 3 --no-tune \
        --out $R/mgr-itemitem-ml-100k-random.json ;;
    # lastfm-2k: loss "auto" = sampled softmax (17,632 items > 10,000); rows at commit 362232c
    itemitem-lastfm-2k-random) $MGREC benchmark --datasets lastfm-2k --models mgr --split random --seeds 3 --no-tune \
        --out $R/mgr-itemitem-lastfm-2k-random.json ;;
    # ciao's neural baselines under `random` (tuned on seed 0's validation, like the others)
    ciao-random-neural) $MGREC benchmark --datasets ciao --models lightgcn,multivae --split random --seeds 3 \
        --out $R/models-ciao-random-lgcn-mvae.json
        $MGREC benchmark --datasets ciao --models sasrec --split random --seeds 3 --out $R/models-ciao-random-sasrec.json ;;
    ciao-loo-baselines) $MGREC benchmark --datasets ciao --models pop,itemknn,ease,bprmf,multivae,lightgcn --split loo \
        --seeds 3 --out $R/models-ciao-loo-baselines.json ;;
    ciao-loo-sasrec) $MGREC benchmark --datasets ciao --models sasrec --split loo --seeds 3 \
        --out $R/models-ciao-loo-sasrec.json ;;
    # ciao `random` rows at commit d6308fd: $R/mgr-ciao-random.* (same command, that file name)
    itemitem-ciao) $MGREC benchmark --datasets ciao --models mgr --split random --seeds 3 --no-tune \
        --out $R/mgr-itemitem-ciao-random.json
        $MGREC benchmark --datasets ciao --models mgr --split loo --seeds 3 --no-tune --out $R/mgr-ciao-loo.json ;;
    # the ciao rows again at the current code (session 16): one process per seed, as run
    ciao-rerun) for s in 0 1 2; do
            $MGREC benchmark --datasets ciao --models mgr --split random --seeds $s, --no-tune \
                --out $R/ciao-random-mgr-s$s.json
            $MGREC benchmark --datasets ciao --models mgr --split loo --seeds $s, --no-tune \
                --out $R/ciao-loo-mgr-s$s.json
        done ;;
    # ciao `random` with mgr tuned like the neural baselines (6 trials on seed 0's validation)
    ciao-random-tuned) $MGREC benchmark --datasets ciao --models mgr --split random --seeds 3 \
        --out $R/mgr-ciao-random-tuned.json ;;
    # the ciao `loo` fusion table under the current protocol: the rows `--fusions` adds, one
    # process per (fusion, seed); `mgr` (= `mgr-gated`) is the ciao-rerun step's loo rows
    fusions-ciao-loo) for f in weighted product deep; do for s in 0 1 2; do
            $MGREC benchmark --datasets ciao --models mgr --split loo --seeds $s, --no-tune \
                --config "{\"mgr\": {\"fusion\": \"$f\"}}" --out $R/ciao-loo-mgr-$f-s$s.json
        done; done ;;
    # the summary rows again after the default patience became 20 (commit dcd6a1b), one process
    # per seed as run; ml-100k `loo` tuned (6 trials on seed 0's validation, the loo grid
    # weight_decay x fusion) and SASRec there with patience 20 as well, its tuned config kept
    summary-p20) for s in 0 1 2; do
            for d in ciao lastfm-2k ml-100k; do
                $MGREC benchmark --datasets $d --models mgr --split random --seeds $s, --no-tune \
                    --out $R/$d-random-mgr-s$s.json
            done
            $MGREC benchmark --datasets ciao --models mgr --split loo --seeds $s, --no-tune --out $R/ciao-loo-mgr-s$s.json
            $MGREC benchmark --datasets ml-100k --models sasrec --split loo --seeds $s, --no-tune \
                --config '{"sasrec": {"dropout": 0.2, "max_len": 200, "patience": 20}}' --out $R/ml-100k-loo-sasrec-s$s.json
        done
        $MGREC benchmark --datasets ml-100k --models mgr --split loo --seeds 3 --out $R/ml-100k-loo-mgr-tuned.json ;;
    *) echo "unknown step $1" >&2; exit 2 ;;
    esac
}
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(ml-100k-random ml-100k-loo lastfm-2k-random fusions-ml-100k-random fusions-ml-100k-loo
                                 ablation-ml-100k-random ablation-synthetic coldstart)
for step in "${STEPS[@]}"; do run "$step"; done
