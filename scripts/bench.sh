#!/usr/bin/env bash
# Runs the benchmarks. Each prints its figure next to the raw baseline
# measured in the same run (see README, Benchmarks); the figures that
# report through devtest.ReportFigure also land in var/bench/results.jsonl,
# one JSON object per figure (DESIGN.md), emptied at the start of a run.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/bench
: > var/bench/results.jsonl
export CHAPPER_BENCH_RESULTS="$PWD/var/bench/results.jsonl"
pkgs=()
for m in pipelines services; do
  pkgs+=("github.com/chapper/chapper/${m}/...")
done
go test -run '^$' -bench . -benchtime 1x -timeout 30m "$@" "${pkgs[@]}"
echo "figures: var/bench/results.jsonl"
