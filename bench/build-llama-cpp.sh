#!/usr/bin/env bash
# Builds llama.cpp (https://github.com/ggml-org/llama.cpp, MIT) from its source into
# bench/out/llama.cpp/ for bench/gguf.ts's comparison column: llama.cpp's own decode of the same
# GGUF files, compiled for this CPU (-DGGML_NATIVE=ON, Release). None of its code is committed here.
#
#   bench/build-llama-cpp.sh PATH       PATH is a llama.cpp checkout, a bare git directory of it
#                                       (its HEAD is used), or a git bundle file, e.g. the one
#                                       node-llama-cpp ships: bench/out/node-llama-cpp/node_modules/
#                                       node-llama-cpp/llama/gitRelease.bundle (the source of the
#                                       npm prebuilt column, so both columns are the same llama.cpp)
#   bench/build-llama-cpp.sh            clones tag $LLAMA_CPP_TAG (default below, the release
#                                       node-llama-cpp 3.21.1 pins) from GitHub (needs network)
#
# Produces (bench/out/ is git-ignored):
#   bench/out/llama.cpp/src/            the source used
#   bench/out/llama.cpp/build/bin/llama-bench   (and the shared libraries it loads)
#
# The build runs with -j${JOBS:-2} (this machine has 2 cores; run it under `nice -n 19`).
# bench/gguf.ts runs `llama-bench -m FILE -p 0 -n STEPS -t THREADS` for its llama.cpp column when
# build/bin/llama-bench is there (LLAMA_CPP_DIR names another such folder).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${LLAMA_CPP_DIR:-$here/out/llama.cpp}"
tag="${LLAMA_CPP_TAG:-v0.4.0}"
jobs="${JOBS:-2}"
mkdir -p "$out"
src="${1:-}"
if [[ -d "$out/src" ]]; then
  # kept, so that a rebuild is incremental; remove it to take another source
  echo "using the source already in $out/src (remove it to fetch another)"
elif [[ -z "$src" ]]; then
  git clone --depth 1 --branch "$tag" https://github.com/ggml-org/llama.cpp "$out/src"
elif [[ -f "$src/CMakeLists.txt" ]]; then
  cp -a "$src" "$out/src"
elif [[ -f "$src" ]] && git bundle verify "$src" >/dev/null 2>&1; then
  git clone -q "$src" "$out/src"
elif git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  mkdir -p "$out/src"
  git --git-dir="$src" archive HEAD | tar -x -C "$out/src"
  echo "llama.cpp from $(git --git-dir="$src" rev-parse --short HEAD) of $src"
else
  echo "error: $src is neither a llama.cpp checkout, a git directory nor a git bundle" >&2
  exit 1
fi

[[ -f "$out/src/tools/llama-bench/llama-bench.cpp" || -f "$out/src/examples/llama-bench/llama-bench.cpp" ]] || {
  echo "error: $out/src does not look like llama.cpp (no llama-bench source)" >&2
  exit 1
}

set -x
cmake -S "$out/src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
cmake --build "$out/build" --config Release -j"$jobs" --target llama-bench
"$out/build/bin/llama-bench" --help >/dev/null
