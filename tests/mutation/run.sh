#!/usr/bin/env bash
# Mutation testing of the rules, the decision code and verify (docs/testing.md).
# Not part of the normal test command. Configuration: pyproject.toml [tool.mutmut];
# working directory: ./mutants (git-ignored).
#
#   tests/mutation/run.sh                  fresh run over all five modules
#   tests/mutation/run.sh engine audit     fresh run over some modules: policy fees cashback (switch/rules/),
#                                          decide engine (switch/authorize/), audit (switch/ledger/)
#   tests/mutation/run.sh --resume engine  keep ./mutants and its results, test only what is not yet decided
#   tests/mutation/run.sh --resume engine:_undo_purchase engine:_reversal
#                                          only the mutants of these functions (methods or module functions)
#   tests/mutation/run.sh --survivors      keep ./mutants, re-test only the mutants that survived last time
#                                          (after adding tests: new tests get their coverage collected first)
#
# Environment: MAX_CHILDREN (parallel mutant workers, default 2), RUN_TIMEOUT_S (bound on the whole
# run, default 5400), MUTATION_SKIP (space-separated test files or node ids to leave out, e.g. a test
# that fails on the tree as it is: mutmut refuses to start unless every selected test passes). Each mutant is also bounded by mutmut's own CPU-time limit (timeout).
set -euo pipefail

MUTMUT_VERSION=3.8.1
# mutants are edits of the .py files: a compiled build beside them (setup.py) must not run instead
export EUM_PURE_PYTHON=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('mutmut') != '$MUTMUT_VERSION')" 2>/dev/null; then
    python3 -m pip install --quiet "mutmut==$MUTMUT_VERSION"
fi

resume=0
survivors=0
modules=()
functions=()
for arg in "$@"; do
    case "$arg" in
        --resume) resume=1 ;;
        --survivors) resume=1; survivors=1 ;;
        policy|fees|cashback|decide|engine|audit) modules+=("$arg") ;;
        policy:*|fees:*|cashback:*|decide:*|engine:*|audit:*) functions+=("$arg") ;;
        *) echo "unknown argument: $arg (expected --resume, --survivors, MODULE or MODULE:FUNCTION; MODULE one of policy|fees|cashback|decide|engine|audit)" >&2; exit 2 ;;
    esac
done

if [ "$resume" = 0 ]; then
    rm -rf mutants
fi

dotted() {
    case "$1" in
        policy|fees|cashback) echo "switch.rules.$1" ;;
        decide|engine) echo "switch.authorize.$1" ;;
        audit) echo "switch.ledger.$1" ;;
    esac
}

# Mutant names look like switch.authorize.decide.xǁ_Decisionǁ_undo_purchase__mutmut_12.
patterns=()
for m in "${modules[@]+"${modules[@]}"}"; do
    patterns+=("$(dotted "$m").*")
done
for mf in "${functions[@]+"${functions[@]}"}"; do
    m="${mf%%:*}" f="${mf#*:}"
    patterns+=("$(dotted "$m").*ǁ${f}__mutmut_*" "$(dotted "$m").x_${f}__mutmut_*")
done
if [ "$survivors" = 1 ]; then
    mapfile -t patterns < <(python3 tests/mutation/summary.py --names "${modules[@]+"${modules[@]}"}")
    if [ "${#patterns[@]}" = 0 ]; then
        echo "no surviving mutants to re-test"
        python3 tests/mutation/summary.py
        exit $?
    fi
fi

# The mutation run loads tests/mutation/mutmut_plain_logs.py as a pytest plugin (pyproject: -p).
export PYTHONPATH="$ROOT/tests/mutation${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${MUTATION_SKIP:-}" ]; then
    echo "leaving out of the mutation run: $MUTATION_SKIP"
fi

status=0
timeout --signal=INT --kill-after=60 "${RUN_TIMEOUT_S:-5400}" \
    python3 -m mutmut run --max-children "${MAX_CHILDREN:-2}" "${patterns[@]+"${patterns[@]}"}" || status=$?
if [ "$status" = 124 ]; then
    echo "mutation run stopped at RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-5400}s; re-run with --resume to continue" >&2
fi

python3 tests/mutation/summary.py
exit "$status"
