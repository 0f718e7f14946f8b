#!/usr/bin/env bash
# End-to-end demo on $LRFR_DATA into $LRFR_WORKSPACE (called by `make demo`; ~15 min on 2 CPU cores).
# Every step is skipped when its artifact is already complete, so a second `make demo` is quick,
# and a killed demo resumes where it stopped.
set -euo pipefail
: "${LRFR_DATA:?set LRFR_DATA}"
: "${LRFR_WORKSPACE:=./lrfr-workspace}"
export LRFR_WORKSPACE
LRFR=".venv/bin/lrfr"
T="--threads 1"   # one torch thread per process: on 2 shared cores this is many times faster

# 1. align the raw photos (MTCNN + 5-point warp; the group photo gives six faces, noise.jpg none)
$LRFR align "$LRFR_DATA/raw_photos" --out raw_photos --select all $T
# 2. training list from the aligned CelebA subset, 10 % of each identity held out
$LRFR make-list "$LRFR_DATA/celeba_subset/images" --out celeba --val-fraction 0.1
# 3. low-resolution copies at 8/12/16/20 px (bicubic with anti-aliasing, up-sampled back to 112)
$LRFR degrade "$LRFR_DATA/celeba_subset/images" --name celeba --sizes 8,12,16,20
# 4. a small CPU model with an LR recipe: Approach1 (ArcFace with a larger margin for LR samples)
#    on Cross-Resolution Batches (half of each batch replaced by 8..24-px copies), 3 epochs,
#    validated on LFW View-1 dev-test pairs after each epoch
$LRFR train --data lists/celeba --backbone tiny --loss approach1 --crb-mode split --lr-prob 0.5 \
  --lr-sizes 8,12,16,20,24 --optimizer adamw --lr 2e-3 --weight-decay 0.05 \
  --epochs 3 --batch-size 64 --cache $T --workers 1 \
  --val-pairs "$LRFR_DATA/lfw/pairsDevTest.txt" --run demo-approach1
# 5. LFW View 2 (10 folds), HR gallery vs probes at 8/12/16/20 px and HR; fixed crop for speed
$LRFR eval --dataset lfw --model runs/demo-approach1 --sizes 8,12,16,20,112 --align center-crop
# 6. fine-tune it for low resolution with the Octuplet loss (HR/LR batch-hard triplets), evaluate again
$LRFR finetune --method octuplet --from runs/demo-approach1 --data lists/celeba --max-steps 60 \
  --p 16 --k 4 --cache $T --workers 0 --run octuplet-demo
$LRFR eval --dataset lfw --model runs/octuplet-demo --sizes 8,12,16,20,112 --align center-crop
# 7. one report over both runs: table, accuracy-vs-size and ROC plots, training curves
$LRFR report --runs demo-approach1 --runs octuplet-demo --name demo --format md
$LRFR status
echo "report: $LRFR_WORKSPACE/reports/demo/ (results.md, results.csv, results.json, *.png)"
