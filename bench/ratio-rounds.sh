#!/bin/bash
# ratio-rounds.sh ROUNDS N BASE=BINARY:REGEX NAME=BINARY:REGEX ...
#
# Throughput ratios against a baseline measured in the same rounds, for a
# shared, noisy machine. Each round runs every benchmark once, in a new
# random order (a fixed order lets whatever runs first or after the baseline
# carry a systematic bias), for exactly N iterations; the first NAME is the
# baseline. For each other NAME it prints the median ns/op and the median and
# quartiles of the per-round ratio baseline ns/op / its ns/op (its throughput
# relative to the baseline: above 1 is faster). Medians of per-round ratios
# are steadier than ratios of medians here: a burst of load elsewhere hits a
# whole round.
#
#   go test -c -o /tmp/bench.test ./bench
#   bench/ratio-rounds.sh 30 8000 \
#     raw=/tmp/bench.test:'RoundTrip/^raw-amqp091$/inflight=64$' \
#     warren=/tmp/bench.test:'RoundTrip/^rabbitmq$/inflight=64$'
#
# Needs WARREN_AMQP_URL for the RabbitMQ benchmarks, and shuf (coreutils).
set -euo pipefail
if [ $# -lt 4 ]; then
	sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
fi
rounds=$1 n=$2
shift 2
base=${1%%=*}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq "$rounds"); do
	for v in $(printf '%s\n' "$@" | shuf); do
		name=${v%%=*} rest=${v#*=}
		bin=${rest%%:*} re=${rest#*:}
		ns=$("$bin" -test.run '^$' -test.bench "$re" -test.benchtime="${n}x" -test.count=1 2>&1 |
			awk '/^Benchmark.*ns\/op/{print $3; exit}') || true # a failed run is reported below
		if [ -z "$ns" ]; then
			echo "$name round $r: failed" >&2
			continue
		fi
		echo "$r $name $ns" >>"$out"
	done
done
# quartiles of a sorted column, by linear interpolation
awk -v base="$base" '
	function q(a, k, p,   h, i) { h = (k - 1) * p + 1; i = int(h); return i >= k ? a[k] : a[i] + (h - i) * (a[i + 1] - a[i]) }
	function sort(a, k,   i, j, t) { for (i = 2; i <= k; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
	{ ns[$1, $2] = $3; names[$2] = 1; rs[$1] = 1 }
	END {
		for (v in names) {
			k = 0; m = 0
			for (r in rs) {
				if ((r, v) in ns) { m++; t[m] = ns[r, v] }
				if (v != base && (r, v) in ns && (r, base) in ns) { k++; x[k] = ns[r, base] / ns[r, v] }
			}
			sort(t, m)
			if (v == base) { printf "%-12s median %8.0f ns/op  (baseline, %d rounds)\n", v, q(t, m, 0.5), m; continue }
			sort(x, k)
			printf "%-12s median %8.0f ns/op  %s/%s: median %.3f, quartiles %.2f-%.2f (%d rounds)\n", v, q(t, m, 0.5), v, base, q(x, k, 0.5), q(x, k, 0.25), q(x, k, 0.75), k
		}
	}' "$out" | sort
