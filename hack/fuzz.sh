#!/usr/bin/env bash
# Fuzzes with cargo-fuzz (libFuzzer) on the nightly toolchain; the targets live in fuzz/ (their
# own cargo workspace). Prints one line per target: executions, crashes, seconds.
#
#   hack/fuzz.sh                 each target for at least 1,000,000 executions
#   hack/fuzz.sh --runs 5000000  each target for that many
#   hack/fuzz.sh --brief         each target for a few seconds, plus a replay of
#                                fuzz/regressions/; fails on any crash (CI, from hack/test.sh)
#   hack/fuzz.sh --seconds 60    each target for that long instead of a number of runs
#   hack/fuzz.sh duration ...    only the named targets
#
# New corpus entries go to fuzz/corpus/<target>/ (the readable seeds stay in fuzz/seeds/);
# `--cmin` minimises each corpus afterwards. Crashes and hangs (-timeout) are written to
# fuzz/artifacts/<target>/; a fixed one belongs in fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
runs=1000000
seconds=""
brief=false
cmin=false
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --brief) brief=true ;;
    --runs) runs="$2"; shift ;;
    --seconds) seconds="$2"; shift ;;
    --cmin) cmin=true ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
if $brief; then seconds=${seconds:-5}; fi

# cargo-fuzz itself, built once into the cache.
root="$HOME/.cache/vaultkeeper/cargo-fuzz-$CARGO_FUZZ_VERSION"
if [[ ! -x "$root/bin/cargo-fuzz" ]]; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $root"
  env -u CARGO_TARGET_DIR nice -n 10 cargo install --locked --root "$root" cargo-fuzz \
    --version "$CARGO_FUZZ_VERSION"
fi
export PATH="$root/bin:$PATH"
# The fuzz workspace has its own target directory (its flags, coverage instrumentation on
# nightly, would rebuild everything in a shared one), kept in the cache so that a fresh clone
# (CI) reuses the build.
export CARGO_TARGET_DIR="$HOME/.cache/vaultkeeper/fuzz-target"
if ! rustc +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi

# The project forbids unsafe code, so AddressSanitizer would find little and halve the speed.
build_flags=(--sanitizer none)
echo "== building the fuzz targets"
started=$SECONDS
nice -n 10 cargo +nightly fuzz build "${build_flags[@]}"
echo "   built in $((SECONDS - started))s"
[[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(cargo +nightly fuzz list)

# A hang is a bug (gtmpl once never returned on an unclosed action): 10 s per input at most.
libfuzzer_flags=(-timeout=10 -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1)
if [[ -n "$seconds" ]]; then
  limit=(-max_total_time="$seconds")
else
  limit=(-runs="$runs")
fi

failed=0
mkdir -p target/fuzz
printf '%-26s %12s %8s  %s\n' target executions seconds crashes
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  seeds="fuzz/seeds/$target"
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  dirs=("$corpus")
  if $brief; then
    # libFuzzer writes (and replaces) inputs in its first directory: keep the committed one as is.
    rm -rf "target/fuzz/corpus/$target"
    mkdir -p "target/fuzz/corpus/$target"
    dirs=("target/fuzz/corpus/$target" "$corpus")
  fi
  [[ -d "$seeds" ]] && dirs+=("$seeds")
  log="target/fuzz/$target.log"
  started=$SECONDS
  status=0
  nice -n 10 cargo +nightly fuzz run "${build_flags[@]}" "$target" "${dirs[@]}" -- \
    "${libfuzzer_flags[@]}" "${limit[@]}" >"$log" 2>&1 || status=$?
  took=$((SECONDS - started))
  executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [[ -n "$executions" ]] || executions=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  crashes=0
  if [[ $status -ne 0 || -n "$artifact" ]]; then
    crashes=${artifact:-"exit $status, see $log"}
    failed=1
  fi
  printf '%-26s %12s %8s  %s\n' "$target" "${executions:-?}" "$took" "$crashes"
  if [[ $status -ne 0 ]]; then
    grep -m1 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /' || true
  fi
  if $cmin && [[ $status -eq 0 ]]; then
    # Edge coverage and a set cover keep the committed corpus at a few hundred small files.
    nice -n 10 cargo +nightly fuzz cmin "${build_flags[@]}" "$target" "$corpus" -- \
      -use_counters=0 -set_cover_merge=1 -timeout=10 >"target/fuzz/$target.cmin.log" 2>&1
    echo "    corpus minimised to $(ls "$corpus" | wc -l) files"
  fi
done

# Inputs of crashes that were fixed must keep passing: the target binary runs each file once.
if $brief && [[ -d fuzz/regressions ]]; then
  for dir in fuzz/regressions/*/; do
    target=$(basename "$dir")
    [[ -n "$(ls "$dir")" ]] || continue
    if "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$target" -timeout=10 "$dir"* \
      >"target/fuzz/$target.regressions.log" 2>&1; then
      echo "regressions of $target: $(ls "$dir" | wc -l) inputs pass"
    else
      echo "regressions of $target FAIL (target/fuzz/$target.regressions.log)"
      failed=1
    fi
  done
fi
exit $failed
