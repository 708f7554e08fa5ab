#!/usr/bin/env bash
# GPU check for a session lent the H200 device machine (torch is there; the rest travels as wheels).
#
# Here (once):   bench/gpu_wheels.sh          # downloads the missing wheels into .whl/ (git-ignored)
# Device tool:   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# Prints: pure encode_image images/s at batch 64/256 in fp16 and bf16 (eager, then compiled),
# text/s, and end-to-end images/s through the real server with 1 MP JPEGs from a local static
# server (with the server's CPU and its event loop's per image), the idle single-image p50, and what
# the HTTP layer alone can feed on this host's CPU; then WORKERS=1,2,4 (and nproc/2 where larger) model
# replicas on the one GPU (bench.workers, tiny and 1 MP JPEGs): where one GPU saturates. Typically 7-9
# minutes; each step has its own timeout, and the whole script stops before 10 minutes: the WORKERS
# step gets what is left of them, and is skipped, saying so, when too little is.
# `bash bench/gpu_check.sh workers` runs the WORKERS step alone (3-4 minutes); `bash bench/gpu_check.sh e2e`
# skips the pure-forward step (the rest, in about 5 minutes). GPU_CHECK_BUDGET_S caps the whole run (570 s).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD:$PWD/client
else
  export PYTHONPATH=$PWD:$PWD/client
fi
PY=python3
# Overridable only to dry-run the script on a CPU machine (e.g. GPU_CHECK_DEVICE=cpu GPU_CHECK_MODEL=clip-tiny).
DEV=${GPU_CHECK_DEVICE:-cuda}
MODEL=${GPU_CHECK_MODEL:-ViT-B-32}
DUR=${GPU_CHECK_SECONDS:-30}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

# The WORKERS counts: 1,2,4, and nproc/2 where that is larger (one worker's event loop and decode threads per 2 cores).
WORKERS_LIST=${GPU_CHECK_WORKERS:-1,2,4}
HALF=$(( $(nproc) / 2 ))
if [ -z "${GPU_CHECK_WORKERS:-}" ] && [ "$HALF" -gt 4 ]; then WORKERS_LIST="$WORKERS_LIST,$HALF"; fi
workers_step() {
  local budget=$1
  echo "== WORKERS=$WORKERS_LIST model replicas on this GPU ($MODEL, $DEV), each with STATE_URL (bench.workers): images/s, CPU per image"
  if [ "$budget" -lt 90 ]; then
    echo "skipped: ${budget}s left of this run's 10 minutes; run it alone: bash bench/gpu_check.sh workers"
    return
  fi
  # A pod's own defaults (one decode thread per core in each worker); the earlier steps' exports are for one process.
  # On timeout bench.workers stops its servers and redis-servers; the rows already printed stand.
  timeout "$budget" env -u CPU_WORKERS -u DOWNLOAD_CONCURRENCY -u ENGINE_MAX_BATCH -u CACHE_MAX_ENTRIES \
    $PY -m bench.workers --model $MODEL --device $DEV --workers "$WORKERS_LIST" --parts scaling --repeats 1 \
    --duration $(( DUR / 4 > 1 ? DUR / 4 : 2 )) -c 64 -b 32 || echo "workers run failed or timed out"
}
if [ "${1:-}" = "workers" ]; then workers_step 300; exit 0; fi

PHOTOS=$(mktemp -d)
$PY - "$PHOTOS" <<'PYEOF'
import sys, numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for i in range(16):
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((1280, 960), Image.BICUBIC)
    noise = rng.integers(-12, 12, (960, 1280, 3))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
    img.save(f"{sys.argv[1]}/photo{i:02d}-1mp.jpg", quality=90)
PYEOF

if [ "${1:-}" != "e2e" ]; then
echo "== pure forward ($MODEL, random weights, $DEV); decode+preprocess of a 1 MP JPEG on one of this host's cores"
timeout 90 $PY -m bench.limit --device $DEV --model $MODEL --dtype fp16 --batches 64,256 --seconds 3 --photos "$PHOTOS"
timeout 60 $PY -m bench.limit --device $DEV --model $MODEL --dtype bf16 --batches 64,256 --seconds 3 --photos /nonexistent --no-text
timeout 150 $PY -m bench.limit --device $DEV --model $MODEL --dtype fp16 --batches 64,256 --seconds 3 --photos /nonexistent --no-text --compile \
  || echo "compiled run failed or timed out"
fi

echo "== end to end through the server"
export EMBEDDING_HMAC_SECRET=$(python3 -c "import secrets; print(secrets.token_hex(16))")
export CLIP_MODEL=$MODEL CLIP_PRETRAINED=none DEVICE=$DEV ALLOW_PRIVATE_URLS=1 HOST=127.0.0.1 PORT=8765
# The load repeats 16 photos: the embedding cache is off, or it would measure cache hits.
export ENGINE_MAX_BATCH=256 CPU_WORKERS=12 DOWNLOAD_CONCURRENCY=128 MAX_BATCH_SIZE=64 LOG_LEVEL=warning CACHE_MAX_ENTRIES=0
$PY -m app & SERVER=$!
for _ in $(seq 90); do curl -sf http://127.0.0.1:8765/health >/dev/null && break; sleep 1; done
curl -s http://127.0.0.1:8765/health; echo
# The server's CPU and its event loop's (one thread) per image show which bounds the end-to-end rate.
cpu_now() { $PY -c "import sys; from bench.procs import cpu_seconds as c; p = int(sys.argv[1]); print(c(p), c(p, p))" "$SERVER"; }
E2E=$(mktemp)
read -r CPU0 LOOP0 <<<"$(cpu_now)"
timeout 60 $PY -m bench.load --server http://127.0.0.1:8765 --photos "$PHOTOS" --glob '*-1mp.jpg' --static-servers 4 -c 32 -b 32 --duration $DUR --json > "$E2E"
read -r CPU1 LOOP1 <<<"$(cpu_now)"
$PY - "$E2E" "$CPU0" "$CPU1" "$LOOP0" "$LOOP1" <<'PYEOF' || echo "end-to-end load failed"
import json, sys
r = json.load(open(sys.argv[1]))
for key, value in r.items():
    print(f"{key:12s} {value}")
try:
    c0, c1, l0, l1 = map(float, sys.argv[2:])
except ValueError:
    sys.exit("the server's CPU times could not be read (did it exit?)")
items = max(1.0, r["items_per_s"] * r["seconds"])
print(f"server CPU {(c1 - c0) / items * 1e6:.0f} us/image ({(c1 - c0) / r['seconds']:.1f} cores busy); "
      f"event loop {(l1 - l0) / items * 1e6:.0f} us/image ({(l1 - l0) / r['seconds'] * 100:.0f}% of its one thread)")
PYEOF
timeout 40 $PY -m bench.load --server http://127.0.0.1:8765 --photos "$PHOTOS" --glob '*-1mp.jpg' -c 1 -b 1 --duration $((DUR / 2))
timeout 40 $PY -m bench.load --server http://127.0.0.1:8765 --kind text -c 64 -b 1 --duration $((DUR / 2))
curl -s http://127.0.0.1:8765/health; echo
kill $SERVER; wait $SERVER 2>/dev/null

echo "== the HTTP layer alone on this host's CPU (stand-in model of no cost, 64x48 JPEGs): what one event loop can feed"
timeout 45 $PY -m bench.overhead --kind image -c 32 -b 32 --duration $((DUR / 3)) || echo "overhead run failed"

# SECONDS: bash's count since the script started; the whole run stays under 10 minutes (570 s, and a margin).
LEFT=$(( ${GPU_CHECK_BUDGET_S:-570} - SECONDS ))
workers_step $(( LEFT < 270 ? LEFT : 270 ))
