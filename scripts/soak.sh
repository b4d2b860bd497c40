#!/usr/bin/env bash
# The soak (issue 9): ingest, timeline, persist and search as chapper serve
# processes beside an embedded stack, 7,000 records/s offered with a fault
# every few minutes; a table (var/soak/soak.txt), a plot
# (var/soak/soak.png) and a verdict at the end. An hour by default:
#   make soak                          # the hour
#   make soak SOAK_ARGS=-soak.duration=3m
set -euo pipefail
cd "$(dirname "$0")/.."
go test -tags soak -count=1 -v -run '^TestSoak$' -timeout 3h ./services/cmd/chapper "$@"
