#!/usr/bin/env bash
# The tests whose subject is timing (signals, kills, interrupts, locks), run REPEATS times with every core
# kept busy and REPEATS times alone, to show that their verdicts do not depend on the machine's speed
# (tests/README.md). Usage: scripts/test.sh --stress [REPEATS] [PYTEST ARGS...]: 3 repeats by default;
# the arguments (test files, options) replace the default target `tests`.
# The busy rounds start one busy-loop process per core (at least 2) and kill them when the rounds end,
# also on Ctrl-C or failure. Prints each round's outcome and duration, then the pass counts; exits
# non-zero if any round failed.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=3
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    repeats="$1"
    shift
fi
selection="(sigterm or sigkill or sigint or kill or interrupt or lock) and not block"
workers="${FLATNESS_TEST_WORKERS:-2}"
pytest_args=(-q -rs -p no:cacheprovider -k "$selection")
if [ "$workers" -gt 1 ]; then
    pytest_args+=(-n "$workers" --dist loadfile)
fi
bash scripts/bootstrap.sh

busy_pids=()
test_pid=""
stop_busy() {
    local pid
    for pid in ${busy_pids[@]+"${busy_pids[@]}"}; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    busy_pids=()
}
stop_all() {
    if [ -n "$test_pid" ]; then
        kill "$test_pid" 2>/dev/null || true
        wait "$test_pid" 2>/dev/null || true
    fi
    stop_busy
}
trap stop_all EXIT
trap 'exit 130' INT TERM

start_busy() {
    local cores i
    cores="$(nproc 2>/dev/null || echo 2)"
    [ "$cores" -ge 2 ] || cores=2
    for ((i = 0; i < cores; i++)); do
        (while :; do :; done) &
        busy_pids+=("$!")
    done
}

declare -A passed=([busy]=0 [idle]=0)
summary=()
run_round() {  # run_round LABEL N: one run of the selection; records its outcome and duration
    local label="$1" n="$2" began ended outcome
    began="$(date +%s.%N)"
    # in the background, so that a signal to this script is handled at once (bash runs a trap only
    # after the foreground command ends), stopping the tests and the busy loops
    .venv/bin/python -m pytest "${pytest_args[@]}" "${@:3}" &
    test_pid=$!
    if wait "$test_pid"; then
        outcome="passed"
        passed[$label]=$((passed[$label] + 1))
    else
        outcome="FAILED"
    fi
    test_pid=""
    ended="$(date +%s.%N)"
    summary+=("$(printf '%s round %d/%d: %s in %.0f s' "$label" "$n" "$repeats" "$outcome" "$(awk "BEGIN { print $ended - $began }")")")
    echo "${summary[-1]}"
}

[ $# -gt 0 ] || set -- tests
start_busy
echo "busy rounds: ${#busy_pids[@]} busy-loop processes on $(nproc) cores"
for ((r = 1; r <= repeats; r++)); do
    run_round busy "$r" "$@"
done
stop_busy
for ((r = 1; r <= repeats; r++)); do
    run_round idle "$r" "$@"
done

printf '%s\n' "${summary[@]}"
echo "busy: ${passed[busy]}/$repeats passed; idle: ${passed[idle]}/$repeats passed"
[ "${passed[busy]}" -eq "$repeats" ] && [ "${passed[idle]}" -eq "$repeats" ]
