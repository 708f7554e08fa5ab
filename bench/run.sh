#!/usr/bin/env bash
# Measure the compute limit and the load scenarios in one run and print the ratios (see bench/report.py).
# Usage: bench/run.sh [--duration 30] [--rss-minutes 10] [--model ViT-B-32] [--device cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s install
exec .venv/bin/python -m bench.report "$@"
