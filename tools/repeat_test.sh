#!/bin/sh
# Run one test RUNS times in each of LOOPS parallel loops, beside BUSY busy loops (a loaded
# machine), keeping worker dirs; one summary line per run in OUT. The loops behind
# docs/reliability.md's "Open: exactly_once copies" figures ran with LOOPS=2 BUSY=1.
#   KAFKA_BOOTSTRAP_SERVERS=... tools/repeat_test.sh RUNS 'tests/...py::test[exactly_once]' [OUT]
set -u
runs=$1 test=$2 out=${3:-repeat-test.summary}
loops=${LOOPS:-2} busy=${BUSY:-1}
export FBP_KEEP_WORKER_DIRS=1
spinners="" i=0
while [ "$i" -lt "$busy" ]; do (while :; do :; done) & spinners="$spinners $!"; i=$((i + 1)); done
loop() {
  n=1
  while [ "$n" -le "$runs" ]; do
    log="$out.$1.$n.log"
    .venv/bin/python -m pytest -q -p no:randomly -s "$test" > "$log" 2>&1
    echo "loop $1 run $n rc=$? $(grep -o 'duplicates [0-9]*' "$log" | head -1)" >> "$out"
    n=$((n + 1))
  done
}
loopers="" l=1
while [ "$l" -le "$loops" ]; do loop "$l" & loopers="$loopers $!"; l=$((l + 1)); done
wait $loopers
kill $spinners 2>/dev/null
echo "runs with rc != 0: $(grep -vc 'rc=0' "$out")" >> "$out"
