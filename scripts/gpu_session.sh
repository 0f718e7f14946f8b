#!/usr/bin/env bash
# Issue 15 on a GPU machine: install lrfr over the machine's own torch, run the CUDA tests, the
# side-by-side benchmark with arcface_torch, and the eval/align speed benchmarks. Every result
# goes under $OUT (the device tool brings that folder back). See benchmarks/README_gpu.md.
#
#   scripts/gpu_session.sh prepare          # HERE, on the CPU machine, once: .whl/ .peers/ .gpudata/ .lfw/
#   scripts/gpu_session.sh STEP [STEP...]   # THERE, on the GPU machine; each step fits a 10-minute call
#
# Steps (GPU):  install  test  bench  sweep  profile  eval  align  stage-lfw   ("install" runs first)
# What each call must carry (the working tree may not exceed 64 MiB):
#   test, align : .whl .gpudata        bench, sweep, profile : .peers        eval : .lfw (62.2 MiB)
# If the tool counts .lfw + the tree over 64 MiB: two back-to-back calls on the warm machine,
#   carry .lfw_a -> "stage-lfw", then carry .lfw_b -> "stage-lfw eval" (halves made by prepare).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/.bench/out}
mkdir -p "$OUT"
PY=${PY:-python3}
SHARED=${LRFR_SHARED:-$REPO/../shared}
MIB=$((1024 * 1024))

say() { printf '\n== %s ==\n' "$*"; }

# ---------------------------------------------------------------------------- CPU side
prepare() {
    local venv_py=${VENV_PY:-$REPO/.venv/bin/python}
    say "prepare: wheels (.whl), peer (.peers), test data (.gpudata), LFW View 2 (.lfw)"
    mkdir -p .git/info && touch .git/info/exclude
    for p in /.whl/ /.peers/ /.gpudata/ /.lfw/ /.lfw_a/ /.lfw_b/ /.bench/; do grep -qxF "$p" .git/info/exclude || echo "$p" >> .git/info/exclude; done
    # facenet-pytorch is pure Python; --no-deps so nothing else comes along (torch is the machine's).
    ls .whl/facenet_pytorch-2.5.3-*.whl >/dev/null 2>&1 || "$venv_py" -m pip download -q --no-deps --only-binary=:all: -d .whl facenet-pytorch==2.5.3
    [ -d .peers/arcface_torch ] || cp -r "${LRFR_PEERS:-$SHARED/peers}" .peers
    local data=${LRFR_DATA:-$SHARED/data}
    [ -d "$data/lfw" ] || { echo "LRFR_DATA=$data has no lfw/; set LRFR_DATA to the shared data" >&2; exit 2; }
    # jpegtran -optimize re-codes the Huffman tables only: the DCT coefficients, hence every decoded
    # pixel, stay the same (checked below), and View 2's 7,701 photos shrink from 64.9 to ~62 MiB,
    # under the 64 MiB a call may carry.
    if ! command -v jpegtran >/dev/null 2>&1; then
        if [ ! -x /tmp/jpegtran-root/usr/bin/jpegtran ]; then
            (mkdir -p /tmp/jpegtran-deb && cd /tmp/jpegtran-deb && apt-get download libjpeg-turbo-progs libjpeg62-turbo >/dev/null 2>&1 \
                && for f in *.deb; do dpkg -x "$f" /tmp/jpegtran-root; done) || { echo "jpegtran not found: install libjpeg-turbo-progs" >&2; exit 2; }
        fi
        export PATH=/tmp/jpegtran-root/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/jpegtran-root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
    fi
    LRFR_DATA=$data "$venv_py" - <<'EOF'
import os, shutil, subprocess, sys
from pathlib import Path
import cv2, numpy as np
sys.path.insert(0, "benchmarks")
from align import lfw_sample

data = Path(os.environ["LRFR_DATA"]); lfw = data / "lfw"; src = lfw / "lfw-deepfunneled"

def pair_images(pairs: Path) -> set[str]:
    out = set()
    for ln in pairs.read_text().splitlines()[1:]:
        p = ln.split()
        items = [(p[0], p[1]), (p[0], p[2])] if len(p) == 3 else [(p[0], p[1]), (p[2], p[3])]
        out.update(f"{n}/{n}_{int(i):04d}.jpg" for n, i in items)
    return out

def copy(rels, dst: Path):
    for rel in sorted(rels):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (dst / rel).exists():
            shutil.copy2(src / rel, dst / rel)

# .gpudata/test: what tests/test_cuda.py reads (celeba for the trained-model fixture, raw photos,
# the View-1 test pairs' images)
t = Path(".gpudata/test")
if not (t / "celeba_subset").exists():
    shutil.copytree(data / "celeba_subset", t / "celeba_subset")
if not (t / "raw_photos").exists():
    shutil.copytree(data / "raw_photos", t / "raw_photos")
(t / "lfw").mkdir(parents=True, exist_ok=True)
for f in ("pairsDevTest.txt", "pairsDevTrain.txt", "pairs.txt"):
    shutil.copy2(lfw / f, t / "lfw" / f)
copy(pair_images(lfw / "pairsDevTest.txt"), t / "lfw" / "lfw-deepfunneled")
# .gpudata/align: exactly the photos benchmarks/align.py picks from the full tree (one per person)
copy(lfw_sample(src, 600), Path(".gpudata/align/lfw/lfw-deepfunneled"))
# .lfw: LFW View 2 (pairs.txt and its 7,701 photos), Huffman-optimised, checked pixel for pixel
v = Path(".lfw/lfw"); (v / "lfw-deepfunneled").mkdir(parents=True, exist_ok=True)
shutil.copy2(lfw / "pairs.txt", v / "pairs.txt")
rels = sorted(pair_images(lfw / "pairs.txt"))
for rel in rels:
    dst = v / "lfw-deepfunneled" / rel
    if dst.exists():
        continue
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["jpegtran", "-optimize", "-copy", "none", "-outfile", str(dst), str(src / rel)], check=True)
    a, b = cv2.imread(str(src / rel)), cv2.imread(str(dst))
    if a is None or b is None or not np.array_equal(a, b):
        dst.unlink(); raise SystemExit(f"{rel}: jpegtran changed the pixels")
print(f"View 2: {len(rels)} photos, identical pixels after jpegtran -optimize")
# the same photos in two halves (hard links), for a machine that must receive them in two calls
people = sorted({r.split("/")[0] for r in rels})
for half, names in ((".lfw_a", people[: len(people) // 2]), (".lfw_b", people[len(people) // 2 :])):
    for name in names:
        d = Path(half) / "lfw" / "lfw-deepfunneled" / name
        d.mkdir(parents=True, exist_ok=True)
        for f in (v / "lfw-deepfunneled" / name).iterdir():
            if not (d / f.name).exists():
                os.link(f, d / f.name)
shutil.copy2(lfw / "pairs.txt", Path(".lfw_a") / "lfw" / "pairs.txt")
EOF
    for d in .whl .peers .gpudata .lfw .lfw_a .lfw_b; do
        printf '%-9s %6.1f MiB of files\n' "$d" "$(find "$d" -type f -printf '%s\n' | awk -v m=$MIB '{s += $1} END {print s / m}')"
    done
    local tree
    tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    awk -v b="$tree" -v m=$MIB 'BEGIN { printf "working tree without carried folders: %.1f MiB; each call must stay under 64 MiB\n", b / m }'
}

# ---------------------------------------------------------------------------- GPU side
install() {
    say "install (torch already installed: the machine's own)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    # No network there: build with the installed setuptools, fetch nothing.
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || { echo "editable install failed; using PYTHONPATH" >&2; export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}; }
    "$PY" -m lrfr_cli --help >/dev/null
    "$PY" -c "import typer, rich, cv2, scipy, sklearn, matplotlib; print('lrfr imports ok')"
    "$PY" -c "import facenet_pytorch; print('facenet-pytorch', facenet_pytorch.__file__)" 2>/dev/null || echo "(facenet-pytorch not installed: carry .whl for test/align)"
}

test_cuda() {
    say "pytest -m cuda"
    [ -d .gpudata/test ] || { echo "carry .gpudata (scripts/gpu_session.sh prepare makes it)" >&2; return 2; }
    LRFR_DATA=$REPO/.gpudata/test "$PY" -m pytest -m cuda tests/test_cuda.py -v -p no:cacheprovider --junitxml "$OUT/cuda-tests.xml" 2>&1 | tee "$OUT/test.log"
}

bench() {  # the side-by-side rows: the peer, lrfr with its settings, lrfr bf16 (+ channels_last)
    say "arcface_torch vs lrfr"
    "$PY" benchmarks/vs_arcface_torch.py --rows match,bf16,bf16-cl --out "$OUT" 2>&1 | tee "$OUT/bench.log"
}

sweep() {  # lrfr's best settings (no peer): compile, bigger batches
    say "lrfr sweep"
    "$PY" benchmarks/vs_arcface_torch.py --no-peer --steps 150 --rows bf16-cl-compile,bf16-cl-b256,bf16-cl-b512,bf16-cl-compile-b512 --out "$OUT" 2>&1 | tee "$OUT/sweep.log"
}

profile() {  # where the time goes, before tuning
    say "torch.profiler"
    "$PY" benchmarks/vs_arcface_torch.py --profile match --out "$OUT" 2>&1 | tee "$OUT/profile.log"
    "$PY" benchmarks/vs_arcface_torch.py --profile bf16-cl --out "$OUT" 2>&1 | tee -a "$OUT/profile.log"
}

STAGED=/tmp/lfw-staged
stage_lfw() {  # collect the carried half (.lfw_a or .lfw_b) outside the repo, where the next call finds it
    say "stage LFW"
    local d
    for d in .lfw_a .lfw_b; do [ -d "$d" ] && mkdir -p "$STAGED" && cp -a "$d/." "$STAGED/" && echo "staged $d"; done
    echo "$(find "$STAGED" -name '*.jpg' 2>/dev/null | wc -l) of 7701 View-2 photos staged in $STAGED"
}

eval_speed() {  # full LFW View 2 HR-LR, ir50, 6 sizes: cold wall time and the embedding stage's share
    say "eval speed"
    if [ -f .lfw/lfw/pairs.txt ]; then
        export LRFR_DATA=$REPO/.lfw
    elif [ -f $STAGED/lfw/pairs.txt ] && [ "$(find $STAGED -name '*.jpg' | wc -l)" -eq 7701 ]; then
        export LRFR_DATA=$STAGED
    else
        echo "carry .lfw (or stage .lfw_a and .lfw_b first); scripts/gpu_session.sh prepare makes them" >&2; return 2
    fi
    echo "LFW View 2 from $LRFR_DATA"
    local ws=/tmp/lrfr-eval-ws
    rm -rf "$ws"
    # a random-init ir50 run: speed does not depend on the weights
    "$PY" - "$ws" <<'EOF'
import json, sys, torch
from pathlib import Path
from lrfr_cli.models import build_backbone
run = Path(sys.argv[1]) / "runs" / "ir50-random"; (run / "checkpoints").mkdir(parents=True)
torch.manual_seed(0)
cfg = {"backbone": "ir50", "embedding_size": 512, "input_size": 112}
torch.save({"model": build_backbone("ir50").state_dict(), "config": cfg}, run / "checkpoints" / "last.pt")
(run / "config.json").write_text(json.dumps(cfg))
EOF
    for prec in fp32 bf16; do
        sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true  # cold: photos not in the page cache
        local t0 t1
        t0=$(date +%s.%N)
        "$PY" -m lrfr_cli -w "$ws" --quiet --json eval --dataset lfw --model ir50-random --data "$LRFR_DATA/lfw" \
            --sizes 8,12,16,20,24,112 --align center-crop --device cuda --precision "$prec" --batch-size 512 --workers 12 \
            --name "view2-$prec" --force > "$OUT/eval-$prec.json"
        t1=$(date +%s.%N)
        "$PY" - "$OUT/eval-$prec.json" "$t0" "$t1" "$prec" <<'EOF' | tee -a "$OUT/eval.log"
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
t, wall, prec = d["timings"], float(sys.argv[3]) - float(sys.argv[2]), sys.argv[4]
print(f"lrfr eval, LFW View 2 HR-LR 6 sizes, ir50 {prec}: command {wall:.1f} s wall (interpreter + CUDA start included); "
      f"eval {t['total_s']:.1f} s, of which embed stage (decode + degrade + forward, pipelined) {t['embed_s']:.1f} s "
      f"({100 * t['embed_s'] / t['total_s']:.0f} %), load+align {t['load_and_align_s']:.1f} s, score {t['score_s']:.2f} s; "
      f"{d['embeddings']['forward_images']} images through the network at {t['images_per_s']} img/s")
EOF
        rm -rf "$ws/embeddings"
    done
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    "$PY" benchmarks/eval.py --device cuda --backbone ir50 --pairs-per-fold 0 --skip-per-pair --sizes 8,12,16,20,24,112 \
        --batch-size 512 --workers 12 2>&1 | tee -a "$OUT/eval.log"
}

align_speed() {
    say "align speed"
    [ -d .gpudata/align ] || { echo "carry .gpudata (scripts/gpu_session.sh prepare makes it)" >&2; return 2; }
    LRFR_DATA=$REPO/.gpudata/align "$PY" benchmarks/align.py --device cuda --limit 600 --workers 0,4,8 --rounds 3 --batch-size 32 --profile 2>&1 | tee "$OUT/align.log"
}

[ $# -ge 1 ] || { sed -n '2,13p' "$0"; exit 2; }
if [ "$1" = prepare ]; then prepare; exit 0; fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || { echo "no CUDA device here: GPU steps need a GPU machine (prepare runs on the CPU)" >&2; exit 2; }
install
status=0
for step in "$@"; do
    case $step in
        install) ;;
        test) test_cuda || status=1 ;;
        bench) bench || status=1 ;;
        sweep) sweep || status=1 ;;
        profile) profile || status=1 ;;
        eval) eval_speed || status=1 ;;
        align) align_speed || status=1 ;;
        stage-lfw) stage_lfw ;;
        *) echo "unknown step $step (install test bench sweep profile eval align stage-lfw; prepare on the CPU)" >&2; exit 2 ;;
    esac
done
exit $status
