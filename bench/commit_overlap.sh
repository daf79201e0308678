#!/bin/bash
# Faust's "Timer commit is overlapping" warnings (a commit running past the 0.5 s commit
# interval) in keyed benchmark runs, before and after a change, interleaved.
# Run: bench/commit_overlap.sh OLD_CHECKOUT NEW_CHECKOUT [ROUNDS] > bench/results/NAME.md
# Each round runs `bench/keyed.py --rounds 1` (one plain and one keyed run, default sizes) in
# each checkout; the keyed run is the one that writes a table. Uses $KAFKA_BOOTSTRAP_SERVERS.
set -euo pipefail
old=$1 new=$2 rounds=${3:-3}
python=${PYTHON:-python}
echo "# Commits running past their interval in keyed runs"
echo
echo "Date $(date -u '+%Y-%m-%d %H:%M UTC'); old $(git -C "$old" rev-parse --short HEAD), new $(git -C "$new" rev-parse --short HEAD); $(nproc) cores; command \`bench/commit_overlap.sh OLD NEW $rounds\`."
echo
echo "| round | checkout | overlapping commits | their runtimes, s | keyed events/s | load (1 min) |"
echo "| ---: | --- | ---: | --- | ---: | ---: |"
for round in $(seq "$rounds"); do
  for side in old new; do
    dir=${!side}
    err=$(mktemp)
    out=$(cd "$dir" && PYTHONPATH=. timeout 600 "$python" bench/keyed.py --rounds 1 2> "$err")
    runtimes=$(grep -o 'overlapping (interval=[0-9.]* runtime=[0-9.]*' "$err" \
               | sed 's/.*runtime=//' | xargs -r printf '%.1f ' || true)
    count=$(grep -c 'Timer commit is overlapping' "$err" || true)
    keyed=$(echo "$out" | grep -o 'round 1: keyed [0-9,]* events/s' | grep -o '[0-9,]* events' \
            | cut -d' ' -f1)
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "| $round | $side | $count | ${runtimes:--} | $keyed | $load |"
    rm -f "$err"
  done
done
