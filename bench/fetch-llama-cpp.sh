#!/usr/bin/env bash
# Installs llama.cpp as node-llama-cpp ships it (the npm package with prebuilt llama.cpp binaries,
# MIT) into bench/out/node-llama-cpp/ for bench/gguf.ts's comparison column: llama.cpp's own decode
# of the same GGUF files. Nothing of it is committed or becomes a dependency of this package.
#
#   bench/fetch-llama-cpp.sh            npm install -E node-llama-cpp@3.21.1 into bench/out/node-llama-cpp
#
# bench/gguf.ts uses it when bench/out/node-llama-cpp/node_modules/node-llama-cpp exists (or
# NODE_LLAMA_CPP_DIR names another such folder), else it leaves the column out with a note.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${NODE_LLAMA_CPP_DIR:-$here/out/node-llama-cpp}"
mkdir -p "$out"
cd "$out"
[[ -f package.json ]] || echo '{"name":"llama-cpp-bench","private":true}' > package.json
npm install -E node-llama-cpp@3.21.1 --no-audit --no-fund
echo "installed in $out"
