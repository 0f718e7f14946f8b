#!/usr/bin/env bash
# End-to-end demo on $LRFR_DATA into $LRFR_WORKSPACE (called by `make demo`; ~15 min on 2 CPU cores).
# Every step is skipped when its artifact is already complete, so a second `make demo` is instant.
set -euo pipefail
: "${LRFR_DATA:?set LRFR_DATA}"
: "${LRFR_WORKSPACE:=./lrfr-workspace}"
export LRFR_WORKSPACE
LRFR=".venv/bin/lrfr"

# 1. align the raw photos (MTCNN + 5-point warp; the group photo gives six faces, noise.jpg none)
$LRFR align "$LRFR_DATA/raw_photos" --out raw_photos --select all
# 2. training list from the aligned CelebA subset, 10 % of each identity held out
$LRFR make-list "$LRFR_DATA/celeba_subset/images" --out celeba --val-fraction 0.1
# 3. low-resolution copies at 8/12/16/20 px (bicubic with anti-aliasing, up-sampled back to 112)
$LRFR degrade "$LRFR_DATA/celeba_subset/images" --name celeba --sizes 8,12,16,20
# 4. a small CPU model (3 epochs, ~3 min), validated on LFW View-1 dev-test pairs after each epoch
$LRFR train --data lists/celeba --backbone tiny --loss softmax --optimizer adamw --lr 2e-3 --weight-decay 0.05 \
  --epochs 3 --batch-size 64 --cache --threads 1 --workers 1 \
  --val-pairs "$LRFR_DATA/lfw/pairsDevTest.txt" --run demo
# 5. LFW View 2 (10 folds), HR gallery vs probes at 8/12/16/20 px and HR; fixed crop for speed
$LRFR eval --dataset lfw --model runs/demo --sizes 8,12,16,20,112 --align center-crop
$LRFR status
