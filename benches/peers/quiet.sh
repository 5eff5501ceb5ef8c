# Shared by the peer benchmark scripts (sourced): machine CPU ticks and waiting for a
# quiet machine. Needs TICK (getconf CLK_TCK), QUIET_CORES, QUIET_WAIT and a `log`
# function from the sourcing script.

# Busy ticks of all cores (user, nice, system, irq, softirq, steal) since boot.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# Waits up to QUIET_WAIT s until fewer than QUIET_CORES cores are busy over 3 s: other
# engineers build on this VM, and a measurement taken meanwhile is not comparable.
wait_quiet() {
    local start=$SECONDS a b busy
    while :; do
        a=$(machine_ticks)
        sleep 3
        b=$(machine_ticks)
        busy=$(awk -v a="$a" -v b="$b" -v t="$TICK" 'BEGIN { printf "%.2f", (b - a) / t / 3 }')
        if awk -v x="$busy" -v q="$QUIET_CORES" 'BEGIN { exit !(x < q) }'; then return 0; fi
        if ((SECONDS - start >= QUIET_WAIT)); then
            log "machine still busy ($busy cores) after ${QUIET_WAIT} s; measuring anyway"
            return 0
        fi
        log "machine busy ($busy cores busy: $(cut -d' ' -f1-3 /proc/loadavg)); waiting"
        sleep 10
    done
}
