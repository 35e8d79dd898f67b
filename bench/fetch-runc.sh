#!/usr/bin/env bash
# Builds llama2.c's reference `run.c` (https://github.com/karpathy/llama2.c, MIT) into
# bench/out/llama2c/ for the decode benchmark's comparison column. None of its code is committed
# here: give this script a copy you obtained yourself.
#
#   bench/fetch-runc.sh PATH            PATH is run.c itself, a llama2.c checkout, or a bare git
#                                       directory of llama2.c (run.c is taken from its HEAD)
#   bench/fetch-runc.sh                 clones https://github.com/karpathy/llama2.c (needs network)
#
# Produces (bench/out/ is git-ignored):
#   bench/out/llama2c/run.c      the source used
#   bench/out/llama2c/run        gcc -Ofast -march=native -fopenmp   (what `make runomp` builds)
#   bench/out/llama2c/run-O3     gcc -O3, single thread              (what `make run` builds)
#
# bench/decode.ts runs `run` with OMP_NUM_THREADS = the benchmark's thread count, and skips the
# column with a note when the binary is absent. Override the compiler with CC=..., the location
# of the binaries with LLAMA2C_DIR=... (bench/decode.ts reads the same variable).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${LLAMA2C_DIR:-$here/out/llama2c}"
cc="${CC:-gcc}"
mkdir -p "$out"

src="${1:-}"
if [[ -z "$src" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  git clone --depth 1 https://github.com/karpathy/llama2.c "$tmp/llama2.c"
  src="$tmp/llama2.c"
fi

if [[ -f "$src" ]]; then
  cp "$src" "$out/run.c"
elif [[ -f "$src/run.c" ]]; then
  cp "$src/run.c" "$out/run.c"
elif git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  git --git-dir="$src" show HEAD:run.c >"$out/run.c"
  echo "run.c from $(git --git-dir="$src" rev-parse --short HEAD) of $src"
else
  echo "error: $src is neither run.c, a llama2.c checkout, nor a llama2.c git directory" >&2
  exit 1
fi

grep -q 'achieved tok/s' "$out/run.c" || {
  echo "error: $out/run.c does not look like llama2.c's run.c (no 'achieved tok/s' report)" >&2
  exit 1
}

set -x
"$cc" -Ofast -march=native -fopenmp "$out/run.c" -lm -o "$out/run"
"$cc" -O3 "$out/run.c" -lm -o "$out/run-O3"
