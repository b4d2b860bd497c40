#!/usr/bin/env bash
# Runs every test of every module in go.work. Tests start their own stores
# (kfake, Postgres, redis-server, the search server) through devstack.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=()
for m in proto pipelines services services/devstack charts; do
  pkgs+=("github.com/chapper/chapper/${m}/...")
done
go test -count=1 -timeout 12m "$@" "${pkgs[@]}"
