#!/bin/bash
# Reproduces the embedded default model from scratch (see docs/models.md): fetches the emoji
# data with npm, trains the five networks on ONE CPU thread within fixed wall-clock budgets
# (minutes per stage: VQGAN CLIP PRIOR PAELLA, default 8 7 4 50, then 18 more minutes of
# Paella resumed from its export, then a second phase that trains CLIP and the prior again,
# longer, and continues Paella on the new embeddings: default 20 8 70, then 22 more minutes of
# Paella), checks C/PyTorch parity,
# installs the weights into model/data/ and regenerates docs/default-grid.png.
# Needs: bash scripts/install-train-deps.sh (python3-torch, numpy, PIL, matplotlib; npm).
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=(${TRAIN_MINUTES:-8 7 4 50})
MORE=${TRAIN_PAELLA_MORE:-18} # minutes of Paella continued from the exported weights
REFIT=(${TRAIN_REFIT:-20 8 70}) # minutes: CLIP, prior from scratch again; Paella continued
FINAL=${TRAIN_PAELLA_FINAL:-22} # minutes of Paella continued once more
CACHE=train/.cache
OUT=${TRAIN_OUT:-$CACHE/run}
mkdir -p "$CACHE" "$OUT"
[ -d "$CACHE/node_modules/emoji-datasource-twitter" ] ||
  (cd "$CACHE" && npm install --no-audit --no-fund --no-save emoji-datasource-twitter@16.0.0)
[ -x build/paella ] || { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build --target paella; }
export OMP_NUM_THREADS=1
PY=/usr/bin/python3
$PY train/data.py "$CACHE/node_modules" build/paella "$CACHE/emoji32.npz"
/usr/bin/time -f "training wall time %e s" nice $PY train/train.py "$CACHE/emoji32.npz" "$OUT" "${BUDGET[@]}" 2>&1 |
  tee "$OUT/train.out"
nice $PY train/train.py "$CACHE/emoji32.npz" "$OUT" --resume-paella "$MORE" 2>&1 | tee -a "$OUT/train.out"
nice $PY train/train.py "$CACHE/emoji32.npz" "$OUT" --refit-text "${REFIT[@]}" 2>&1 | tee -a "$OUT/train.out"
nice $PY train/train.py "$CACHE/emoji32.npz" "$OUT" --resume-paella "$FINAL" 2>&1 | tee -a "$OUT/train.out"
$PY train/parity.py "$OUT" build/paella
cp "$OUT"/default_{vqgan,clip,prior,t5,paella,retrieval}.safetensors model/data/
cp "$OUT/loss.png" docs/default-model-loss.png
cmake --build build --target paella
/usr/bin/python3 train/grid.py build/paella docs/default-grid.png
