#!/bin/bash
# Clean-clone CI runs, as the stop's CI makes them: clone main at HEAD to /tmp/ci-clone-N,
# a fresh HOME, no KAFKA_BOOTSTRAP_SERVERS, `.ci/run`; RUNS of them, stopping at the first
# failure; then (EXTRA=1) `make chaos` and `make demo` in the last clone. One line per run in
# /tmp/ci-summary.txt; each run's output in /tmp/ci-run-N.log.
#   RUNS=5 EXTRA=1 tools/ci_loop.sh
head=$(git -C "$(dirname "$0")/.." rev-parse HEAD)
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
out=/tmp/ci-summary.txt
echo "head $head" > $out
for i in $(seq 1 "${RUNS:-3}"); do
  d=/tmp/ci-clone-$i; rm -rf "$d" "/tmp/ci-home-$i"; mkdir -p "/tmp/ci-home-$i"
  git clone -q "$repo" "$d" && git -C "$d" checkout -q "$head"
  start=$(date +%s)
  (cd "$d" && env -u KAFKA_BOOTSTRAP_SERVERS HOME="/tmp/ci-home-$i" .ci/run > "/tmp/ci-run-$i.log" 2>&1)
  rc=$?
  echo "run $i rc=$rc $(( $(date +%s) - start )) s $(grep -E '[0-9]+ passed' "/tmp/ci-run-$i.log" | tail -1)" >> $out
  if [ $rc != 0 ]; then break; fi
done
if [ "${EXTRA:-1}" = 1 ]; then
  d=/tmp/ci-clone-$i
  start=$(date +%s); (cd "$d" && env -u KAFKA_BOOTSTRAP_SERVERS HOME="/tmp/ci-home-$i" make chaos > /tmp/ci-chaos.log 2>&1); echo "chaos rc=$? $(( $(date +%s) - start )) s" >> $out
  start=$(date +%s); (cd "$d" && env -u KAFKA_BOOTSTRAP_SERVERS HOME="/tmp/ci-home-$i" make demo > /tmp/ci-demo.log 2>&1); echo "demo rc=$? $(( $(date +%s) - start )) s" >> $out
fi
echo done >> $out
