#!/bin/bash
# cpu-per-request.sh ROUNDS N NAME=BINARY:REGEX ...
#
# Runs each benchmark binary (go test -c -o BINARY ./bench) for exactly N
# iterations of the sub-benchmarks matching REGEX, ROUNDS times interleaved,
# and prints wall throughput and the CPU time per request of the benchmark
# process and of the local RabbitMQ node (beam.smp, read from /proc), as in
# docs/benchmarks.md. Needs WARREN_AMQP_URL and a RabbitMQ on this machine.
#
#   go test -c -o /tmp/bench.test ./bench
#   bench/cpu-per-request.sh 5 30000 \
#     warren=/tmp/bench.test:'RoundTrip/^rabbitmq$/inflight=64$' \
#     raw=/tmp/bench.test:'RoundTrip/^raw-amqp091$/inflight=64$'
set -eu
rounds=$1 n=$2
shift 2
tick=$(getconf CLK_TCK)
beamcpu() { # utime+stime of the RabbitMQ node, in ticks
	awk '{print $14+$15}' "/proc/$(pgrep -u rabbitmq beam.smp | head -1)/stat"
}
for r in $(seq "$rounds"); do
	for v in "$@"; do
		name=${v%%=*} rest=${v#*=}
		bin=${rest%%:*} re=${rest#*:}
		b0=$(beamcpu)
		out=$({ /usr/bin/time -f "GO %U %S" "$bin" -test.run '^$' -test.bench "$re" -test.benchtime="${n}x" -test.count=1; } 2>&1) || true
		b1=$(beamcpu)
		ns=$(echo "$out" | awk '/^Benchmark.*ns\/op/{print $3; exit}')
		if [ -z "$ns" ]; then
			echo "$name round $r: failed"
			continue
		fi
		gocpu=$(echo "$out" | awk '/^GO/{print $2+$3}')
		awk -v name="$name" -v r="$r" -v ns="$ns" -v g="$gocpu" -v b=$((b1 - b0)) -v tick="$tick" -v n="$n" -v load="$(cut -d' ' -f1 /proc/loadavg)" \
			'BEGIN{printf "%-10s round %s  %9.0f req/s  go %6.1f us/req  rabbitmq %6.1f us/req  load %s\n", name, r, 1e9/ns, g*1e6/n, b/tick*1e6/n, load}'
	done
done
