#!/usr/bin/env bash
# Runs every test of every module in go.work. Tests start their own stores
# (kfake, Postgres, redis-server, the search server) through devstack; the
# crash and fault tests (services/cmd/chapper) build chapper and run it as
# child processes. The packages with concurrency (the consumer runtime, the
# sinks, ingest, query) run under the race detector. Every test binary
# that runs through devtest.Main checks for leaked goroutines at its end.
set -euo pipefail
cd "$(dirname "$0")/.."
mods=()
for m in proto pipelines services services/devstack charts; do
  mods+=("github.com/chapper/chapper/${m}/...")
done
race_re='^github.com/chapper/chapper/(pipelines/(runtime|timeline|persist|search)|services/(ingest|query))(/|$)'
mapfile -t all < <(go list "${mods[@]}")
race=() plain=()
for p in "${all[@]}"; do
  if [[ $p =~ $race_re ]]; then race+=("$p"); else plain+=("$p"); fi
done
go test -count=1 -timeout 15m "$@" "${plain[@]}"
go test -race -count=1 -timeout 15m "$@" "${race[@]}"
