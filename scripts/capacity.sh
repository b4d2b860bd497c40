#!/usr/bin/env bash
# The capacity report's measurements (docs/capacity.md):
#  1. BenchmarkCapacity: ingest and each pipeline as their own processes
#     with 1, 2 and 4 partitions (figures in var/bench/results.jsonl and a
#     table at the end);
#  2. two campaigns of `chapper loadgen -loadgen.mode=campaign` against
#     `chapper dev -auth` on ports of its own, 60 s each: 35,000 canvassers
#     (700 records/s, DESIGN.md's national peak) and the same at 10x
#     (7,000 records/s); their tables go to var/capacity/ and their plots to
#     docs/capacity-<n>.png.
# Environment: CHAPPER_CAPACITY_RECORDS, CHAPPER_CAPACITY_PARTITIONS (see
# the benchmark), CAMPAIGN_DURATION (default 60s), SKIP_BENCH=1 for the
# campaigns alone.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/capacity var/bench
status=0
if [ -z "${SKIP_BENCH:-}" ]; then
  results="$PWD/var/bench/capacity.jsonl"
  : > "$results"
  CHAPPER_BENCH_RESULTS="$results" go test -run '^$' -bench '^BenchmarkCapacity$' -benchtime 1x -timeout 60m \
    ./services/cmd/chapper | tee var/capacity/bench.txt || status=1
  (cd services && go run ./devstack/devtest/benchtable "$results") | tee var/capacity/figures.txt || status=1
fi

go build -o bin/chapper ./services/cmd/chapper || exit 1
dir="$PWD/var/capacity/dev"
rm -rf "$dir"
./bin/chapper dev -auth -log.level=warn -dev.dir="$dir" \
  -grpc.addr=127.0.0.1:17070 -admin.addr=127.0.0.1:17071 -dev.kafka-addr=127.0.0.1:29092 \
  -dev.postgres-addr=127.0.0.1:25432 -dev.redis-addr=127.0.0.1:26379 -dev.ids-redis-addr=127.0.0.1:26380 \
  -dev.search-addr=127.0.0.1:29200 \
  > var/capacity/dev.log 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null' EXIT
for _ in $(seq 1 180); do
  curl -fsS -o /dev/null http://127.0.0.1:17071/readyz 2>/dev/null && break
  sleep 1
done
curl -fsS -o /dev/null http://127.0.0.1:17071/readyz || { echo "chapper dev did not get ready; see var/capacity/dev.log" >&2; exit 1; }

campaign() { # canvassers speedup name
  ./bin/chapper loadgen -auth -auth.keys-dir="$dir/auth" -loadgen.mode=campaign \
    -loadgen.addr=127.0.0.1:17070 -loadgen.canvassers="$1" -loadgen.speedup="$2" \
    -loadgen.duration="${CAMPAIGN_DURATION:-60s}" -loadgen.plot="docs/capacity-$3.png" \
    -loadgen.kafka-brokers=127.0.0.1:29092 -loadgen.query-addr=127.0.0.1:17070 \
    -loadgen.router-url='postgres://postgres@127.0.0.1:25432/chapper_router?sslmode=disable' \
    -loadgen.search-url=http://127.0.0.1:29200 | tee "var/capacity/campaign-$3.txt" || status=1
}
echo "== campaign: 35,000 canvassers (about 700 records/s)"
campaign 35000 1 35k
echo "== campaign: 35,000 canvassers at 10x (about 7,000 records/s)"
campaign 35000 10 35k-x10
exit "$status"
