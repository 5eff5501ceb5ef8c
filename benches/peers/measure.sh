# Shared by the wire benchmark scripts (sourced): logging, ports, waiting for a server,
# and `measure`, which runs one load-generator workload and appends its RESULT line with
# the server's, the load generator's and everything else's CPU seconds to $RESULTS.
# Needs PEERS, TICK, LOADGEN, RESULTS, ITEMS, QUIET_CORES and QUIET_WAIT; `measure`
# reads the server's CPU from SERVER_PID (and its children).

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
free_port() {
    local p=$1
    while port_busy "$p"; do p=$((p + 1)); done
    echo "$p"
}

wait_ready() { # url
    for _ in $(seq 1 1200); do
        if psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "server at $1 did not come up"
    return 1
}

# CPU ticks (user + system, own + reaped children) of SERVER_PID and its live children.
server_ticks() {
    local total=0 p f
    for p in "$SERVER_PID" $(ps -o pid= --ppid "$SERVER_PID" 2>/dev/null); do
        f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        total=$((total + $(awk '{ print $12 + $13 + $14 + $15 }' <<<"$f")))
    done
    echo "$total"
}

# measure SYSTEM URL DIALECT [loadgen args…]: runs a loadgen workload, keeps its RESULT
# line with the server's, the load generator's and everything else's CPU seconds added.
measure() {
    local system=$1 url=$2 dialect=$3
    shift 3
    wait_quiet
    log "$system: $*"
    local out before after mbefore mafter rc=0
    before=$(server_ticks)
    mbefore=$(machine_ticks)
    out=$(/usr/bin/time -f 'TIME wall=%e user=%U sys=%S' "$LOADGEN" --url "$url" \
        --dialect "$dialect" --items "$ITEMS" "$@" 2>&1) || rc=$?
    sleep 0.5
    after=$(server_ticks)
    mafter=$(machine_ticks)
    if [[ $rc != 0 ]]; then
        echo "$out" >&2
        log "$system: $* failed"
        echo "system=$system failed=1 $*" >>"$RESULTS"
        return 0
    fi
    echo "$out" | grep -v '^RESULT\|^TIME' >&2
    local lg srv other
    lg=$(echo "$out" | awk '/^TIME/ { split($3, u, "="); split($4, s, "="); print u[2] + s[2] }')
    srv=$(awk -v a="$before" -v b="$after" -v t="$TICK" 'BEGIN { printf "%.2f", (b - a) / t }')
    other=$(awk -v a="$mbefore" -v b="$mafter" -v t="$TICK" -v s="$srv" -v l="$lg" \
        'BEGIN { o = (b - a) / t - s - l; printf "%.2f", (o < 0 ? 0 : o) }')
    log "$system: used ${srv} s server CPU, ${lg} s load-generator CPU, ${other} s other CPU; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$out" | grep '^RESULT' \
        | sed "s/^RESULT /system=$system /; s/\$/ server_cpu_s=$srv loadgen_cpu_s=$lg other_cpu_s=$other load1=$(cut -d' ' -f1 /proc/loadavg)/" \
            >>"$RESULTS"
}

# machine_ticks, wait_quiet (until fewer than QUIET_CORES cores are busy).
. "$PEERS/quiet.sh"
