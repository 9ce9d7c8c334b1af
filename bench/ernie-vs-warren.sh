#!/usr/bin/env bash
# ernie-vs-warren.sh: `warren bert` against Ernie, side by side, in the same
# randomised rounds (issue 15, item 4). Fetches nothing at run time.
#
#   bench/ernie-vs-warren.sh /path/to/ernie [ROUNDS] [SECONDS]
#
# Ernie's source (https://github.com/mojombo/ernie, MIT): any checkout, e.g.
#   git clone https://github.com/mojombo/ernie /tmp/ernie
# or `git --git-dir=BARE archive HEAD | tar -x -C /tmp/ernie` from a mirror.
# Needs Erlang/OTP (Debian's erlang-nox; scripts/deps.d/ruby-erlang installs
# it) and Go. The script patches the checkout in place (idempotent) for
# OTP >= 23, then compiles elib/*.erl into ebin/:
#   1. erlang:get_stacktrace/0 is gone (OTP 23): elib/ernie_native.erl
#      binds the stack in the catch clause instead:
#        sed -i -E 's/error:Error ->/error:Error:Trace ->/;
#                   /Trace = erlang:get_stacktrace\(\),/d' elib/ernie_native.erl
#   2. Ernie's modules logger and logger_sup clash with OTP's own logger
#      (kernel, OTP 21; sticky, so Ernie's cannot load): renamed to
#      ernie_logger and ernie_logger_sup, files and references:
#        sed -i -E 's/\blogger(_sup)?\b/ernie_logger\1/g' elib/*.erl
#        mv elib/logger.erl elib/ernie_logger.erl
#        mv elib/logger_sup.erl elib/ernie_logger_sup.erl
#
# Both servers serve the same handlers, with an access log each:
#   nat  native: nat:add/2, an Erlang module for Ernie, Warren's Go
#        bertrpc/nat for warren bert;
#   ext  external: Ernie's own examples/ext.rb (Ruby, its lib/ernie.rb,
#        Debian's ruby-bert), 2 workers, for both servers.
# bench/bertload drives them with {call, MOD, add, [1, 2]} in each client
# shape, 16 connections:
#   new   a connection per call (Ernie closes after each reply: its only shape)
#   kept  16 kept-open connections, one call in flight each (Warren)
#   pipe  16 kept-open connections, 16 calls in flight each (Warren)
# Each round runs every (server, shape) once, in random order, for SECONDS
# (default 5), and prints calls/s and calls per server CPU-second (user +
# system time of the server process and its descendants, the Ruby workers,
# from /proc). MODS="nat" leaves the Ruby handler out. At the end: median and
# quartiles over the rounds of Warren's per-round ratios to Ernie.
# WARREN_B=/path/to/warren adds a second Warren binary to the same rounds
# (to measure a change; ratios B/A are printed too).
# Ports: ERNIE_PORT (18100), WARREN_PORT (18101), WARREN_B_PORT (18102).
set -euo pipefail

ernie=${1:?usage: $0 /path/to/ernie [ROUNDS] [SECONDS]}
rounds=${2:-5}
secs=${3:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
ernie=$(cd "$ernie" && pwd)
ep=${ERNIE_PORT:-18100}
wp=${WARREN_PORT:-18101}
bp=${WARREN_B_PORT:-18102}

tmp=$(mktemp -d /tmp/ernie-vs-warren.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

# Patch and build Ernie.
if grep -q 'erlang:get_stacktrace' "$ernie/elib/ernie_native.erl"; then
	sed -i -E 's/error:Error ->/error:Error:Trace ->/; /Trace = erlang:get_stacktrace\(\),/d' "$ernie/elib/ernie_native.erl"
fi
if [ -f "$ernie/elib/logger.erl" ]; then
	sed -i -E 's/\blogger(_sup)?\b/ernie_logger\1/g' "$ernie"/elib/*.erl
	mv "$ernie/elib/logger.erl" "$ernie/elib/ernie_logger.erl"
	mv "$ernie/elib/logger_sup.erl" "$ernie/elib/ernie_logger_sup.erl"
fi
mkdir -p "$ernie/ebin"
(cd "$ernie" && erlc -o ebin elib/*.erl 2>&1 | grep -v -e 'Warning' -e '^%' -e '^$' >&2 || true)
[ -f "$ernie/ebin/ernie_logger.beam" ] || { echo "Ernie did not build" >&2; exit 1; }

# The handler: nat:add/2 for Ernie.
cat >"$tmp/nat.erl" <<'ERL'
-module(nat).
-export([add/2, echo/1]).
add(A, B) -> A + B.
echo(X) -> X.
ERL
(cd "$tmp" && erlc nat.erl)
ext="ruby $ernie/examples/ext.rb"
printf '[{module, nat},\n {type, native},\n {codepaths, ["%s"]}].\n[{module, ext},\n {type, external},\n {command, "%s"},\n {count, 2}].\n' "$tmp" "$ext" >"$tmp/ernie.cfg"
printf '[{module, nat}, {type, native}].\n[{module, ext}, {type, external}, {command, "%s"}, {count, 2}].\n' "$ext" >"$tmp/warren.cfg"
mods=${MODS:-nat ext}

(cd "$root" && go build -o "$tmp/warren" ./cmd/warren && go build -o "$tmp/bertload" ./bench/bertload)

# Start the servers (erl execs beam.smp: the pid is the VM's).
(cd "$ernie" && exec erl -noshell -noinput +Bc +K true -pz ebin \
	-ernie_server_app port "$ep" \
	-ernie_server_app config "\"$tmp/ernie.cfg\"" \
	-ernie_server_app log_level 2 \
	-ernie_server_app access_log "\"$tmp/ernie-access.log\"" \
	-run ernie_server_app boot >"$tmp/ernie.out" 2>&1) &
epid=$!
pids+=("$epid")
"$tmp/warren" bert -c "$tmp/warren.cfg" --host 127.0.0.1 -p "$wp" -a "$tmp/warren-access.log" >"$tmp/warren.out" 2>&1 &
wpid=$!
pids+=("$wpid")
servers=("ernie $ep $epid" "warren $wp $wpid")
if [ -n "${WARREN_B:-}" ]; then
	"$WARREN_B" bert -c "$tmp/warren.cfg" --host 127.0.0.1 -p "$bp" -a "$tmp/warrenB-access.log" >"$tmp/warrenB.out" 2>&1 &
	bpid=$!
	pids+=("$bpid")
	servers+=("warrenB $bp $bpid")
fi

# Wait for every server to answer (and warm up).
for s in "${servers[@]}"; do
	read -r name port pid <<<"$s"
	ok=
	for _ in $(seq 1 100); do
		if "$tmp/bertload" -addr "127.0.0.1:$port" -shape new -conns 1 -duration 100ms >/dev/null 2>&1 &&
			{ [ "$mods" = nat ] || "$tmp/bertload" -addr "127.0.0.1:$port" -mod ext -shape new -conns 1 -duration 100ms >/dev/null 2>&1; }; then
			ok=1
			break
		fi
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	[ -n "$ok" ] || { echo "$name did not start:" >&2; cat "$tmp/$name.out" >&2; exit 1; }
done

echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cpus; warren $(cd "$root" && git rev-parse --short HEAD); $rounds rounds x ${secs}s; 16 connections"
for r in $(seq 1 "$rounds"); do
	runs=()
	for s in "${servers[@]}"; do
		read -r name port pid <<<"$s"
		for mod in $mods; do
			if [ "$name" = ernie ]; then
				runs+=("$name $mod new $port $pid")
			else
				for shape in new kept pipe; do runs+=("$name $mod $shape $port $pid"); done
			fi
		done
	done
	printf '%s\n' "${runs[@]}" | shuf | while read -r name mod shape port pid; do
		"$tmp/bertload" -addr "127.0.0.1:$port" -mod "$mod" -shape "$shape" -conns 16 -depth 16 \
			-duration "${secs}s" -pid "$pid" -label "round=$r server=$name mod=$mod shape=$shape"
	done
done | tee "$tmp/results"

# Per-round ratios, then median and quartiles (nearest rank).
awk -v B="${WARREN_B:+1}" '
function stats(arr, n,   i, j, t, q1, q2, q3) {
	if (n == 0) return "n=0"
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
	q1 = arr[int((n - 1) * 0.25) + 1]; q2 = (arr[int((n + 1) / 2)] + arr[int(n / 2) + 1]) / 2; q3 = arr[n - int((n - 1) * 0.25)]
	return sprintf("median %.2f  quartiles %.2f-%.2f  (n=%d)", q2, q1, q3, n)
}
/^round=/ {
	for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
	k = f["server"] "/" f["mod"] "/" f["shape"]; cps[f["round"], k] = f["calls_per_s"]; cpu[f["round"], k] = f["calls_per_cpu_s"]
	keys[k] = 1; if (f["round"] > nr) nr = f["round"]
}
END {
	print ""
	print "Ratios to Ernie with the same handler (ernie/MOD/new: Ernie closes after each reply, its only shape), per round:"
	for (k in keys) {
		if (k ~ /^ernie/) continue
		split(k, p, "/"); e = "ernie/" p[2] "/new"; n = 0; m = 0
		for (r = 1; r <= nr; r++) if (cps[r, e] > 0 && cps[r, k] > 0) { a[++n] = cps[r, k] / cps[r, e]; c[++m] = cpu[r, k] / cpu[r, e] }
		printf "%-18s calls/s     %s\n", k, stats(a, n)
		printf "%-18s calls/CPU-s %s\n", k, stats(c, m)
	}
	print "Medians of the raw figures:"
	for (k in keys) {
		n = 0; m = 0
		for (r = 1; r <= nr; r++) if (cps[r, k] > 0) { a[++n] = cps[r, k]; c[++m] = cpu[r, k] }
		printf "%-18s calls/s     %s\n", k, stats(a, n)
		printf "%-18s calls/CPU-s %s\n", k, stats(c, m)
	}
	if (B) {
		print "warrenB / warren, per round:"
		for (k in keys) {
			if (k !~ /^warren\//) continue
			split(k, p, "/"); kb = "warrenB/" p[2] "/" p[3]; n = 0; m = 0
			for (r = 1; r <= nr; r++) if (cps[r, k] > 0) { a[++n] = cps[r, kb] / cps[r, k]; c[++m] = cpu[r, kb] / cpu[r, k] }
			printf "%-18s calls/s     %s\n", p[2] "/" p[3], stats(a, n)
			printf "%-18s calls/CPU-s %s\n", p[2] "/" p[3], stats(c, m)
		}
	}
}' "$tmp/results"
