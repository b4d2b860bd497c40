#!/usr/bin/env bash
# Runs the benchmarks. Each prints its figure next to the raw baseline
# measured in the same run (see README, Benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=()
for m in pipelines services; do
  pkgs+=("github.com/chapper/chapper/${m}/...")
done
go test -run '^$' -bench . -benchtime 1x -timeout 30m "$@" "${pkgs[@]}"
