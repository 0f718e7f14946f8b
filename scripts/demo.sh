#!/usr/bin/env bash
# End-to-end demo on $LRFR_DATA into $LRFR_WORKSPACE (called by `make demo`; ~15 min on 2 CPU cores):
# a real pretrained recogniser (MobileFace, ONNX) as it comes, fine-tuned for low resolution with
# lrfr, evaluated before and after on LFW View 2 at 8-24 px, one report with both curves.
# Every step is skipped when its artifact is already complete, so a second `make demo` is quick,
# and a killed demo resumes where it stopped.
set -euo pipefail
: "${LRFR_DATA:?set LRFR_DATA}"
: "${LRFR_WORKSPACE:=./lrfr-workspace}"
export LRFR_WORKSPACE
LRFR=".venv/bin/lrfr"
MODEL="$LRFR_DATA/models/mobileface_112_rgb_nhwc.onnx"
# The file carries no lrfr metadata: its README says RGB pixels 0..255 (it normalises inside the graph).
PRE="--channel-order rgb --pixel-mean 0 --pixel-std 1"
SIZES="8,12,16,20,24,112"
: "${DEMO_STEPS:=500}"   # fine-tuning steps of 32 faces (the tuned recipe; DEMO_STEPS=150 for a quick look)

# 1. align the raw photos (MTCNN + 5-point warp; the group photo gives six faces, noise.jpg none)
$LRFR align "$LRFR_DATA/raw_photos" --out raw_photos --select all --threads 1
# 2. fine-tuning list from the aligned CelebA subset (its people are not LFW's)
$LRFR make-list "$LRFR_DATA/celeba_subset/images" --out celeba
# 3. the pretrained model as it comes: LFW View 2 (10 folds), HR gallery vs probes at 8..24 px and HR,
#    LFW aligned with MTCNN as its README measured it (cached in aligned/lfw-mtcnn)
$LRFR eval --dataset lfw --model "$MODEL" $PRE --sizes "$SIZES"
# 4. fine-tune it for low resolution: pure feature distillation (the tuned recipe, see README):
#    the frozen original is the teacher, the student sees every face at 8..20 px and at HR and is
#    pulled to the teacher's HR embedding (1 - cos); every weight of the imported graph trains
$LRFR finetune --method distill --from "$MODEL" $PRE --data lists/celeba \
  --id-weight 0 --method-opt hr_weight=1 --p-down 1 --feature-loss cosine --lambda 1 \
  --lr-sizes 8,12,16,20 --optimizer adamw --lr 2e-4 --weight-decay 0 --max-steps "$DEMO_STEPS" \
  --p 8 --k 4 --cache --workers 0 --threads 1 --checkpoint-every 100 --run mobileface-lr
# 5. the fine-tuned model on the same protocol (exported on the fly: onnxruntime runs this graph
#    2.4x faster than torch on the CPU, benchmarks/infer_cpu.py)
$LRFR eval --dataset lfw --model runs/mobileface-lr --sizes "$SIZES" --backend onnxruntime
# 6. one report over both: table, accuracy-vs-size and ROC plots
$LRFR report --name demo --format md
$LRFR status
echo "report: $LRFR_WORKSPACE/reports/demo/ (results.md, results.csv, results.json, *.png)"
