#!/bin/bash
# cpu-per-request.sh ROUNDS N NAME=BINARY:REGEX ...
# cpu-per-request.sh ROUNDS NSMALL:NBIG NAME=BINARY:REGEX ...
#
# Runs each benchmark binary (go test -c -o BINARY ./bench) for exactly N
# iterations of the sub-benchmarks matching REGEX, ROUNDS times, each round
# in a new random order, and prints wall throughput and the CPU time per
# request of the benchmark process and of the local RabbitMQ node (the
# beam.smp listening on RABBITMQ_PORT, 5672 by default, read from /proc), as
# in docs/benchmarks.md. Needs WARREN_AMQP_URL and a RabbitMQ on this
# machine (reading its /proc needs root or the rabbitmq user).
#
# With NSMALL:NBIG each round runs every benchmark twice, for NSMALL and for
# NBIG iterations, and the CPU per request is the difference of the two runs
# divided by NBIG-NSMALL: what the setup costs (declaring the topology,
# starting an agent, run twice by the testing package) cancels out. With a
# single N it is included, which for Warren's fixture on RabbitMQ is 0.1-0.3 s
# of the broker's CPU: 5-10 us per request at N=20000.
#
#   go test -c -o /tmp/bench.test ./bench
#   bench/cpu-per-request.sh 6 4000:24000 \
#     warren=/tmp/bench.test:'RoundTrip/^rabbitmq$/inflight=64$' \
#     raw=/tmp/bench.test:'RawVariant/^plain$/inflight=64$'
set -eu
if [ $# -lt 3 ]; then
	sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
fi
rounds=$1 n=$2
shift 2
small=0 big=$n
case $n in *:*) small=${n%%:*} big=${n#*:} ;; esac
tick=$(getconf CLK_TCK)
port=${RABBITMQ_PORT:-5672}
beampid() {
	ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}
beamcpu() { # utime+stime of the RabbitMQ node, in ticks
	awk '{print $14+$15}' "/proc/$(beampid)/stat"
}
run() { # BINARY REGEX N: Go CPU ticks, broker CPU ticks, ns/op (empty on failure)
	local b0 b1 out
	if [ "$3" -eq 0 ]; then
		echo "0 0 0"
		return
	fi
	b0=$(beamcpu)
	out=$({ /usr/bin/time -f "GO %U %S" "$1" -test.run '^$' -test.bench "$2" -test.benchtime="${3}x" -test.count=1; } 2>&1) || true
	b1=$(beamcpu)
	echo "$(echo "$out" | awk -v tick="$tick" '/^GO/{print int(($2+$3)*tick+0.5)}') $((b1 - b0)) $(echo "$out" | awk '/^Benchmark.*ns\/op/{print $3; exit}')"
}
for r in $(seq "$rounds"); do
	for v in $(printf '%s\n' "$@" | shuf); do
		name=${v%%=*} rest=${v#*=}
		bin=${rest%%:*} re=${rest#*:}
		read -r gs bs _ <<<"$(run "$bin" "$re" "$small")"
		read -r gb bb ns <<<"$(run "$bin" "$re" "$big")"
		if [ -z "${ns:-}" ]; then
			echo "$name round $r: failed"
			continue
		fi
		awk -v name="$name" -v r="$r" -v ns="$ns" -v g=$((gb - gs)) -v b=$((bb - bs)) -v tick="$tick" -v n=$((big - small)) -v load="$(cut -d' ' -f1 /proc/loadavg)" \
			'BEGIN{printf "%-12s round %s  %9.0f req/s  go %6.1f us/req  rabbitmq %6.1f us/req  load %s\n", name, r, 1e9/ns, g/tick*1e6/n, b/tick*1e6/n, load}'
	done
done
