#!/bin/bash
# The guard (bench/downstream.py --ways guard) in two checkouts, interleaved: announced quota
# (phases steady and quota) and learnt quota (phase steady), 9,000 events, Q = 300/s.
# Run: bench/downstream_ab.sh OLD_CHECKOUT NEW_CHECKOUT [ROUNDS] > bench/results/NAME.md
# (checkouts: e.g. `git worktree add --detach /tmp/old <commit>`, with a .venv link). Each run's
# own results file stays in its checkout's bench/results/ab-*.md. Uses $KAFKA_BOOTSTRAP_SERVERS
# if set (else each run starts a broker).
set -euo pipefail
old=$1 new=$2 rounds=${3:-3}
python=${PYTHON:-.venv/bin/python}
echo "# The downstream guard in two checkouts, interleaved"
echo
echo "Date $(date -u '+%Y-%m-%d %H:%M UTC'); old $(git -C "$old" rev-parse --short HEAD), new $(git -C "$new" rev-parse --short HEAD); $(nproc) cores; command \`bench/downstream_ab.sh OLD NEW $rounds\`."
echo "Each cell: \`bench/downstream.py --events 9000 --rounds 1 --ways guard\` (3 workers, Q = 300/s, service burst 30); goodput as % of Q, then 429s as % of calls."
echo
echo "| round | checkout | announced, steady | announced, quota changes | learnt, steady | load (1 min) |"
echo "| ---: | --- | --- | --- | --- | ---: |"
cell() {  # the guard row's goodput and 429 share from a results file, per phase table
  grep '^| guard' "$1" | awk -F'|' '{printf "%s (429s%s)\n", $3, $4}' | sed 's/  */ /g'
}
for round in $(seq "$rounds"); do
  for side in old new; do
    dir=${!side}
    (cd "$dir" && PYTHONPATH=. timeout 900 "$python" bench/downstream.py --events 9000 \
      --rounds 1 --ways guard --phases steady,quota --announce \
      --output "ab-$side-ann-$round" > /dev/null 2>&1)
    (cd "$dir" && PYTHONPATH=. timeout 900 "$python" bench/downstream.py --events 9000 \
      --rounds 1 --ways guard --phases steady --output "ab-$side-learnt-$round" \
      > /dev/null 2>&1)
    mapfile -t ann < <(cell "$dir/bench/results/ab-$side-ann-$round.md")
    learnt=$(cell "$dir/bench/results/ab-$side-learnt-$round.md")
    echo "| $round | $side | ${ann[0]} | ${ann[1]} | $learnt | $(cut -d' ' -f1 /proc/loadavg) |"
  done
done
