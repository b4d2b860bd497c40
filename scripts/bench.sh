#!/usr/bin/env bash
# Runs the benchmarks. Each prints its figure next to the raw baseline
# measured in the same run (see docs/benchmarks.md); the figures that
# report through devtest.ReportFigure also land in var/bench/results.jsonl,
# one JSON object per figure (DESIGN.md), emptied at the start of a run.
# The run ends with one table of every figure (value, baseline, ratio,
# target, met).
#
#   BENCH=<regexp>   run only the benchmarks matching it (go test -bench),
#                    e.g. BENCH='Timeline|Persist'
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/bench
results="$PWD/var/bench/results.jsonl"
: > "$results"
export CHAPPER_BENCH_RESULTS="$results"
pkgs=()
for m in pipelines services; do
  pkgs+=("github.com/chapper/chapper/${m}/...")
done
go test -run '^$' -bench "${BENCH:-.}" -benchtime 1x -timeout 60m "$@" "${pkgs[@]}"
status=$?
echo
echo "== results (var/bench/results.jsonl) =="
(cd services && go run ./devstack/devtest/benchtable "$results") || status=1
if [ "$status" -ne 0 ]; then
  echo "a benchmark failed (status $status); the table shows the figures it reported" >&2
fi
exit "$status"
