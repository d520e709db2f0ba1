#!/usr/bin/env bash
# Runs each fuzz target (services/fuzz) for a bounded time:
#
#   bash ops/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, all)
#
# Targets: request (ingest body parsing and validation), template (URL
# template validation), expansion (adversarial templates and values through
# budgeted expansion), wire (decoding stream entries). An input fails when
# it panics, takes longer than FUZZ_TIMEOUT_S (default 1 s), makes the
# process use more than FUZZ_RSS_LIMIT_MB (default 512 MB), or, for
# request and expansion, allocates more than its work budget
# (services/fuzz/fuzz_targets/budget.rs).
# Needs cargo-fuzz (installed here if missing). libFuzzer wants nightly
# flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them for this
# build only. Corpora grow under services/fuzz/corpus/ (not committed). A
# failing input is copied to services/fuzz/regressions/TARGET/, which the
# test suite replays on every run: commit it with the fix. The final
# statistics of each run are printed (execs, corpus size).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request template expansion wire)
timeout_s=${FUZZ_TIMEOUT_S:-1}
rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-512}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
status=0
for target in "${targets[@]}"; do
    corpus="services/fuzz/corpus/$target"
    artifacts="services/fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts" "services/fuzz/regressions/$target"
    seeds=()
    [ "$target" = request ] && seeds=(schemas/examples)
    echo "==> fuzzing $target for ${seconds}s"
    if ! cargo fuzz run --fuzz-dir services/fuzz -O "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb="$rss_limit_mb" -artifact_prefix="$artifacts/" -print_final_stats=1; then
        status=1
        echo "!!> $target found a failure; keeping it as a regression input"
        cp -n "$artifacts"/* "services/fuzz/regressions/$target/" 2>/dev/null || true
    fi
done
exit $status
