#!/usr/bin/env bash
# End-to-end demo on $LRFR_DATA into $LRFR_WORKSPACE (called by `make demo`).
set -euo pipefail
: "${LRFR_DATA:?set LRFR_DATA}"
: "${LRFR_WORKSPACE:=./lrfr-workspace}"
export LRFR_WORKSPACE
LRFR=".venv/bin/lrfr"
$LRFR align "$LRFR_DATA/raw_photos" --out raw_photos --select all
$LRFR make-list "$LRFR_DATA/celeba_subset/images" --out celeba --val-fraction 0.1
$LRFR degrade "$LRFR_DATA/celeba_subset/images" --name celeba --sizes 8,12,16,20
$LRFR status
