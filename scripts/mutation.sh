#!/usr/bin/env bash
# Mutation testing (mutmut) of the code that decides the scientific answers: run on demand, never in CI.
#
#   scripts/mutation.sh                 every module below, one after another
#   scripts/mutation.sh correlation grid  only the modules whose name (the first column) is given
#
# Each module is mutated in its own scratch folder (.mutation/<name>/: a copy of flatness/ and tests/, with a
# pyproject.toml whose [tool.mutmut] section mutates that one module and selects its tests), so that each
# mutant runs only the fast unit tests of its module (mutmut further narrows them to the tests that call the
# mutated function): one mutant costs about a second. MUTATION_WORKERS (default 1: the machine is shared)
# sets mutmut's --max-children; MUTATION_REPORT_ONLY=1 prints the report of the last runs without running.
# Needs the "mutation" extra: pip install -e '.[mutation]'.
#
# The report: per module, the mutants generated, killed, survived (of which judged equivalent: listed with
# the reason in scripts/mutation_equivalent.txt) and the kill rate over the non-equivalent ones; then every
# surviving, not-equivalent mutant by name (`cd .mutation/<name> && mutmut show NAME` prints its diff).
# mutmut numbers the mutants of a function by position, so an edit to a function renumbers its mutants: after
# changing a module, re-check its entries in the equivalent list.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python="${PYTHON:-$root/.venv/bin/python}"
workers="${MUTATION_WORKERS:-1}"
scratch="$root/.mutation"
equivalent="$root/scripts/mutation_equivalent.txt"

holm_tests="tests/study/test_compare.py::test_comparison_adds_holm_adjusted_p_values_beside_the_raw_ones"
holm_tests+=" tests/study/test_compare.py::test_holm_families_flatness_measures_test_accuracy_alone_and_the_rest"
compare_tests="tests/study/test_compare.py::test_compare_rows_against_hand_means_and_welch_for_three_methods_and_another_baseline"
grid_tests="tests/test_sweep.py::test_grid_expansion_applies_method_keys_to_their_method_only"
grid_tests+=" tests/test_sweep.py::test_bad_grid_is_one_line_and_starts_nothing"
# (a few tests of other files, FILE::TEST; the rest of study/test_compare.py writes run folders and figures)
# name | files to mutate (globs under flatness/) | the unit test files it runs (missing ones are skipped)
modules=(
    "correlation|flatness/generalization/correlation.py|tests/generalization/test_correlation.py"
    "baselines|flatness/generalization/baselines.py|tests/generalization/test_baselines.py"
    "significance|flatness/study/significance.py|tests/study/test_significance.py $compare_tests $holm_tests"
    "quantities|flatness/study/quantities.py|tests/study/test_quantities.py $compare_tests"
    "stopping|flatness/training/stopping.py|tests/training/test_stopping.py"
    "grid|flatness/sweep/grid.py|tests/sweep/test_grid.py $grid_tests"
    "study|flatness/study/compare.py flatness/study/tables.py flatness/study/runs.py|tests/study/test_compare.py tests/study/test_quantities.py tests/study/test_significance.py"
    "sharpness|flatness/sharpness/*.py|tests/sharpness/test_*.py"
    "hessian|flatness/hessian/*.py|tests/hessian/test_*.py"
)

"$python" -c "import mutmut" 2>/dev/null || {
    echo "Error: mutmut is not installed; run: pip install -e '.[mutation]'" >&2
    exit 1
}

toml_list() { # words -> "a", "b"
    local out="" word
    for word in "$@"; do out+="${out:+, }\"$word\""; done
    echo "$out"
}

run_module() { # name, files, tests
    local name=$1 files=$2 tests=() t
    for t in $3; do [ -f "${t%%::*}" ] && tests+=("$t"); done # a file, or a test in one (FILE::TEST)
    [ ${#tests[@]} -gt 0 ] || { echo "$name: no test file exists; skipped" >&2; return; }
    local dir="$scratch/$name"
    rm -rf "$dir" && mkdir -p "$dir"
    cp -r flatness tests "$dir/" # all of tests/: a test file may import another's helpers; only the selected run
    # shellcheck disable=SC2086  # the globs in $files expand here, on purpose
    cat >"$dir/pyproject.toml" <<EOF
[tool.mutmut]
source_paths = ["flatness"]
only_mutate = [$(toml_list $files)]
pytest_add_cli_args_test_selection = [$(toml_list "${tests[@]}")]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist"]
EOF
    echo "== $name: mutating $files; tests: ${tests[*]}" >&2
    (cd "$dir" && "$python" -m mutmut run --max-children "$workers" >run.log 2>&1 &&
        "$python" -m mutmut results --all true >results.txt 2>&1) || {
        echo "$name: mutmut failed, see $dir/run.log" >&2
        tail -5 "$dir/run.log" >&2
        return
    }
}

selected=("$@")
for entry in "${modules[@]}"; do
    IFS="|" read -r name files tests <<<"$entry"
    if [ -z "${MUTATION_REPORT_ONLY:-}" ] && { [ ${#selected[@]} -eq 0 ] || [[ " ${selected[*]} " == *" $name "* ]]; }; then
        run_module "$name" "$files" "$tests"
    fi
done

"$python" - "$scratch" "$equivalent" "${selected[@]}" <<'EOF'
"""The report: counts per module from mutmut's results, less the mutants listed as equivalent."""
import pathlib
import re
import sys

scratch, listed = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wanted = set(sys.argv[3:])
equivalent = {line.split()[0] for line in listed.read_text().splitlines() if line.strip() and not line.startswith("#")}
print(f"{'module':14} {'generated':>9} {'killed':>7} {'survived':>8} {'equivalent':>10} {'no tests':>8} {'kill rate':>9}")
left = []
for results in sorted(scratch.glob("*/results.txt")):
    name = results.parent.name
    if wanted and name not in wanted:
        continue
    status = dict(re.findall(r"^\s*(\S+): (.+)$", results.read_text(), re.M))
    killed = sum(1 for s in status.values() if s in ("killed", "timeout", "segfault"))
    survivors = [m for m, s in status.items() if s == "survived"]
    same = [m for m in survivors if m in equivalent]
    untested = sum(1 for s in status.values() if s == "no tests")
    real = len(status) - len(same)
    rate = f"{100 * killed / real:.1f} %" if real else "-"
    print(f"{name:14} {len(status):9} {killed:7} {len(survivors):8} {len(same):10} {untested:8} {rate:>9}")
    left += [f"{name}: {m}" for m in survivors if m not in equivalent]
    left += [f"{name}: {m} (no test calls it)" for m, s in status.items() if s == "no tests"]
print("\nsurviving, not equivalent:" if left else "\nno surviving mutant that is not equivalent")
print("\n".join(left))
EOF
