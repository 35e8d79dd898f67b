#!/usr/bin/env bash
# The GPU check on the device machine. scripts/gpu-check.ts (`npm run gpu:check`) copies this file to
# .gpu-check/run.sh beside what it prepared (node, node_modules, dist, data); the lead then gives the
# device tool, from the repository root:   bash .gpu-check/run.sh     with carry [".gpu-check"].
#
# One call, planned to leave a rerun's worth of the session's device time: the whole run keeps to
# GPU_CHECK_BUDGET (default 360 s, well under the call's 600 s limit). Every phase runs under
# `timeout` with its own budget: up to its cap, never into the shares (SHARE below: each phase's
# least useful time) of the phases planned after it, PyTorch's timed part and the report (TAIL).
# After the build the phases are planned by priority (PRIORITY) into the time left; those that do
# not fit are skipped up front, saying so. Each phase prints its time and the elapsed device time,
# and the report lists them. A failed build stops everything (PyTorch's side included) and goes
# straight to the report, so that a fix and a rerun fit; the CMake build folder persists on the
# machine ($REPO/build/gpu-check-cmake), so a rerun on the same warm machine rebuilds only what
# changed.
#
#   env       the machine (GPU, nvcc, cmake), cuBLASLt and NCCL found in python3's nvidia wheels
#   node      the carried node binary, unpacked (xz, or python3's lzma)
#   torch     in the background from the start: bench/torch_peft_step.py imports torch,
#             transformers and PEFT while the addon compiles, then waits for `go` (no model on the
#             GPU before it: ours has the whole memory)
#   build     the addon: CMake (+ Ninja) with nvcc, sm_90
#   info      capabilities() of that build: the GPU, its attributes, the GEMM engine, the allocator
#   tests     mocha on the backend-parametrised op tests (the cuda backend is the real GPU here)
#   parity    training steps cpu vs cuda on stories260K (scripts/gpu-check-device.ts)
#   nccl      one stories260K training step through NCCL, one rank, and the 7B adapter's all-reduce
#             of host tensors (scripts/nccl-check.ts); nccl-gpu: the same all-reduce of GPU tensors
#   gemm-lt, gemm-own   GEMM rates at the 7B shapes: the default engine (cuBLASLt), then our own
#   ours7b    the random-weight 7B benchmark (bench/gpu-7b.ts train): steps, MFU, memory, decode
#   clip      the CLIP ViT-L/14 image encoder, random bf16 weights, batch 32 (bench/gpu-mm.ts encode)
#   mm7b      the 7B image-conditioned step on CLIP ViT-L/14 features (bench/gpu-mm.ts train)
#   q4k7b     the 7B adapter step on a Q4_K base, random blocks uploaded per layer (bench/gpu-q4k.ts):
#             B = 4, 4 x 512 with checkpointing (the <= 8 GB target), B = 16
#   torch     go: the plain baseline (bench/torch_plain_adapter.py: its model, one untimed step, the
#             timed steps, decode), GEMM, then PEFT's (the GPU is ours no more); PEFT that fails is
#             reported "not run: <reason>"
#   report    tables: stdout, $OUT/gpu-check.md, $OUT/gpu-check.json (+ gpu-check.log, build.log,
#             tests.log, torch.log: six files, of the eight that may come back)
#
# Every GPU program prints the GEMM engine at its end (a cuBLASLt failure switches to our kernel).
#
# Options: --no-gpu  for a machine without a GPU (gpu-check.ts --dry-run): env, node, build and info
#                    run, every GPU phase is reported "not run (no GPU)"
#          --budget S
# Environment: OUT (results; default .gpu-check/out), GPU_CHECK_WORK (scratch; default a new
# /tmp/gpu-check.XXXXXX), GPU_CHECK_BUILD (the CMake build folder; default
# $REPO/build/gpu-check-cmake), GPU_CHECK_TESTS (mocha files relative to the staged root, default
# dist/test/backend*.test.js and dist/test/*cuda*.test.js), GPU_CHECK_JOBS (build jobs),
# GPU_CHECK_NODE (a node binary to use instead of unpacking node.xz), GPU_CHECK_PYTHON (default
# python3), GPU_CHECK_TORCH_ARGS (more arguments for the PyTorch side, e.g. the test's
# "--shape tiny --device cpu"), CUDACXX (nvcc), LLAMA_ADAPTER_CUBLASLT / LLAMA_ADAPTER_NCCL (else
# found in the wheels).
set -uo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")     # .gpu-check
REPO=$(dirname "$HERE")     # the repository root (the device's copy of the working tree)

# ---- phase bodies (run as `bash run.sh --phase NAME` under timeout, with the exported state) ------
if [ "${1:-}" = "--phase" ]; then
  case "$2" in
    env)
      python3 - "$RES/env.json" <<'PY'
import glob, json, os, subprocess, sys

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""

def find(pattern, extra):
    roots = []
    try:
        import nvidia  # the pip wheels nvidia-cublas, nvidia-nccl-cu13 (a namespace package)
        roots += list(nvidia.__path__)
    except Exception:
        pass
    for r in roots:
        hits = glob.glob(os.path.join(r, "**", pattern), recursive=True)
        if hits:
            return min(hits, key=len)  # libX.so.N rather than libX.so.N.M.K
    for d in extra:
        hits = glob.glob(os.path.join(d, pattern))
        if hits:
            return min(hits, key=len)
    return ""

sysdirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"]
env = {
    "gpu": sh("nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader"),
    "nvcc": sh("nvcc --version | grep -i release"),
    "cmake": sh("cmake --version | head -1"),
    "ninja": sh("ninja --version"),
    "cxx": sh("c++ --version | head -1"),
    "python": sys.version.split()[0],
    "cpus": os.cpu_count(),
    "cublasLt": find("libcublasLt.so.*", sysdirs),
    "nccl": find("libnccl.so.*", sysdirs),
}
json.dump(env, open(sys.argv[1], "w"), indent=1)
for k, v in env.items():
    print(f"env: {k}: {v}")
PY
      ;;
    node)
      mkdir -p "$WORK/bin"
      if [ -n "${GPU_CHECK_NODE:-}" ]; then
        ln -sf "$GPU_CHECK_NODE" "$WORK/bin/node" || exit 1
      elif command -v xz >/dev/null; then
        xz -dc "$HERE/node.xz" >"$WORK/bin/node" || exit 1
      else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
          "$HERE/node.xz" "$WORK/bin/node" || exit 1
      fi
      chmod +x "$WORK/bin/node" && "$WORK/bin/node" --version
      ;;
    build)
      NVCC=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
      GEN=()
      command -v ninja >/dev/null && GEN=(-G Ninja)
      # CMakeLists.txt asks node for node-addon-api's folder from the source dir
      [ -e "$REPO/node_modules" ] || ln -s .gpu-check/node_modules "$REPO/node_modules"
      mkdir -p "$ROOT/build/Release"
      {
        echo "cmake -S $REPO -B $BUILD ${GEN[*]} ... (nvcc $NVCC, $JOBS jobs)"
        cmake -S "$REPO" -B "$BUILD" "${GEN[@]}" \
          -DCMAKE_BUILD_TYPE=Release \
          -DCMAKE_JS_INC="$HERE/node_modules/node-api-headers/include" \
          -DCMAKE_CXX_FLAGS=-DBUILDING_NODE_EXTENSION \
          -DCMAKE_CUDA_COMPILER="$NVCC" \
          -DLLAMA_ADAPTER_CUDA=ON \
          -DLLAMA_ADAPTER_MPI=OFF \
          -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$ROOT/build/Release" &&
          cmake --build "$BUILD" -j "$JOBS"
      } >"$OUT/build.log" 2>&1
      rc=$?
      head -1 "$OUT/build.log"
      grep -E "llama-adapter:|warning|error" "$OUT/build.log" | head -40
      if [ $rc -ne 0 ]; then
        echo "build failed (exit $rc); the end of build.log:"
        tail -40 "$OUT/build.log"
        exit $rc
      fi
      ls -l "$ROOT"/build/Release/*.node
      ;;
    tests)
      cd "$ROOT" || exit 1
      # shellcheck disable=SC2086
      files=$(ls ${GPU_CHECK_TESTS:-dist/test/backend*.test.js dist/test/*cuda*.test.js} 2>/dev/null | sort -u)
      [ -n "$files" ] || { echo "no test files matched"; exit 1; }
      echo "mocha" $files
      # shellcheck disable=SC2086
      node node_modules/mocha/bin/mocha.js --timeout 300000 --exit --reporter spec $files >"$OUT/tests.log" 2>&1
      rc=$?
      grep -E "^ +[0-9]+ (passing|failing|pending)" "$OUT/tests.log"
      [ $rc -eq 0 ] || sed -n '/failing/,$p' "$OUT/tests.log" | head -80
      exit $rc
      ;;
    *)
      echo "unknown phase $2"
      exit 2
      ;;
  esac
  exit $?
fi

# ---- the driver ---------------------------------------------------------------------------------
NO_GPU=0
BUDGET=${GPU_CHECK_BUDGET:-360}
while [ $# -gt 0 ]; do
  case "$1" in
    --no-gpu) NO_GPU=1 ;;
    --budget) BUDGET=$2; shift ;;
    *) echo "usage: bash .gpu-check/run.sh [--no-gpu] [--budget S]"; exit 2 ;;
  esac
  shift
done

START=$(date +%s)
DEADLINE=$((START + BUDGET))
export OUT=${OUT:-$HERE/out}
mkdir -p "$OUT"
export WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
export RES=$WORK/results ROOT=$WORK/root HERE REPO
export BUILD=${GPU_CHECK_BUILD:-$REPO/build/gpu-check-cmake}
mkdir -p "$RES" "$ROOT"
echo "$BUDGET" >"$RES/budget"

status() { echo "$2" >"$RES/$1.status"; echo "--- $1: $2"; }
left() { echo $((DEADLINE - $(date +%s))); }
elapsed() { echo $(($(date +%s) - START)); }

# run_phase NAME CAP NEED RESERVE CMD...: at most CAP seconds, and never into the last RESERVE
# seconds of the budget; skipped when fewer than NEED seconds are left for it. Records its
# seconds and the elapsed device time at its end.
run_phase() {
  local name=$1 cap=$2 need=$3 reserve=$4
  shift 4
  local avail=$(($(left) - reserve))
  local t=$((cap < avail ? cap : avail))
  if [ $t -lt "$need" ]; then
    status "$name" "skipped: out of time ($(left) s of the budget left, $reserve s kept for what follows)"
    return 3
  fi
  echo "=== $name (budget ${t} s; $(elapsed) s elapsed, $(left) s left) ==="
  local s0 rc
  s0=$(date +%s)
  timeout -k 5 "$t" "$@" 2>&1 | tee "$RES/$name.out"
  rc=${PIPESTATUS[0]}
  echo $(($(date +%s) - s0)) >"$RES/$name.seconds"
  elapsed >"$RES/$name.elapsed"
  if [ $rc -eq 0 ]; then
    status "$name" ok
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status "$name" "timed out after ${t} s"
  else
    status "$name" "failed (exit $rc)"
  fi
  echo "    ($name: $(cat "$RES/$name.seconds") s; $(elapsed) s of the device time elapsed, $(left) s of the budget left)"
  return $rc
}
not_run() {
  local why=$1
  shift
  for p in "$@"; do status "$p" "$why"; done
}

main() {
  echo "gpu-check: $(date -u +%FT%TZ), budget ${BUDGET} s, work $WORK, build $BUILD, results $OUT$([ $NO_GPU = 1 ] && echo ', --no-gpu')"
  [ -f "$HERE/manifest.json" ] && python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print("gpu-check: prepared %s from %s, node %s, for the machine kind %s" % (m.get("prepared"), m.get("git"), m.get("node"), m.get("kind")))' "$HERE/manifest.json"

  run_phase env 20 5 0 bash "$SELF" --phase env
  if [ -f "$RES/env.json" ]; then
    pick() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]) or "")' "$RES/env.json" "$1"; }
    [ -n "${LLAMA_ADAPTER_CUBLASLT:-}" ] || { v=$(pick cublasLt); [ -n "$v" ] && export LLAMA_ADAPTER_CUBLASLT=$v; }
    [ -n "${LLAMA_ADAPTER_NCCL:-}" ] || { v=$(pick nccl); [ -n "$v" ] && export LLAMA_ADAPTER_NCCL=$v; }
  fi
  echo "gpu-check: LLAMA_ADAPTER_CUBLASLT=${LLAMA_ADAPTER_CUBLASLT:-(unset)} LLAMA_ADAPTER_NCCL=${LLAMA_ADAPTER_NCCL:-(unset)}"
  export LLAMA_ADAPTER_DATA=$HERE/data

  run_phase node 30 5 0 bash "$SELF" --phase node
  export PATH=$WORK/bin:$PATH

  # The phases after the build: a share each (its least useful time), caps in run_phase's calls.
  # TAIL: PyTorch's part after ours (75 s: the plain model, its steps, GEMM, PEFT) and the report (15 s).
  local gpu_phases="tests parity nccl nccl-gpu gemm-lt gemm-own ours7b clip mm7b q4k7b torch"
  local -A SHARE=([info]=5 [tests]=20 [parity]=10 [nccl]=10 [nccl-gpu]=8 [gemm-lt]=12 [gemm-own]=12 [ours7b]=45 [clip]=15 [mm7b]=25 [q4k7b]=25)
  local ORDER="info tests parity nccl nccl-gpu gemm-lt gemm-own ours7b clip mm7b q4k7b" TAIL=90
  # what runs first when time is short: the 7B benchmark and the op tests, then the rest
  local PRIORITY="info ours7b tests q4k7b mm7b parity gemm-lt clip gemm-own nccl nccl-gpu"
  local PLANNED="$ORDER"
  # reserve NAME: the shares of the planned phases after NAME, and the tail
  reserve() {
    local r=$TAIL seen=0 p
    for p in $ORDER; do
      [ $seen = 1 ] && [[ " $PLANNED " == *" $p "* ]] && r=$((r + SHARE[$p]))
      [ "$p" = "$1" ] && seen=1
    done
    echo $r
  }
  # budget NAME CAP: what NAME may use now (run_phase applies the same rule)
  budget() {
    local t=$(($(left) - $(reserve "$1")))
    echo $((t < $2 ? t : $2))
  }
  # phase NAME CAP NEED CMD...: run_phase when planned, else skipped, saying so
  phase() {
    local name=$1
    if [[ " $PLANNED " != *" $name "* ]]; then
      status "$name" "skipped: out of time (not planned: $PLAN_LEFT s were left after the build)"
      return 3
    fi
    run_phase "$name" "$2" "$3" "$(reserve "$name")" "${@:4}"
  }

  # PyTorch's side starts now (it needs nothing of ours) and waits for $WORK/go before it times anything
  local torch_pid='' torch_s0
  if [ $NO_GPU = 0 ]; then
    echo "=== torch (in the background: set-up now, timed steps after ours) ==="
    torch_s0=$(date +%s)
    # shellcheck disable=SC2086
    timeout -k 5 $(($(left) - 15)) "${GPU_CHECK_PYTHON:-python3}" "$REPO/bench/torch_peft_step.py" --batches "$HERE/data/batches-7b.json" \
      --json "$RES/torch.json" --go "$WORK/go" --deadline $((DEADLINE - 20)) ${GPU_CHECK_TORCH_ARGS:-} >"$OUT/torch.log" 2>&1 &
    torch_pid=$!
  fi

  # the staged root the JavaScript runs from: dist/ finds build/Release/ and node_modules/ beside it
  cp "$REPO/package.json" "$ROOT/"
  rm -rf "$ROOT/dist" && cp -r "$HERE/dist" "$ROOT/dist"
  ln -sfn "$HERE/node_modules" "$ROOT/node_modules"
  mkdir -p "$ROOT/test" && ln -sfn "$REPO/test/golden" "$ROOT/test/golden"
  local cpus
  cpus=$(nproc)
  export JOBS=${GPU_CHECK_JOBS:-$((cpus > 4 && NO_GPU == 0 ? cpus - 2 : cpus))}

  # The build may use all but what the core keeps (info, the op tests, the 7B benchmark, the tail):
  # up to 200 s of a 360 s budget; a slow build leaves the optional phases out, not the core. A
  # machine without a GPU (the dry run) may be slower, and there the build is all there is to time.
  local build_cap=200 build_reserve=$((TAIL + SHARE[info] + SHARE[tests] + SHARE[ours7b]))
  [ $NO_GPU = 1 ] && build_cap=$((BUDGET - 40)) build_reserve=30
  if run_phase build $build_cap 30 $build_reserve bash "$SELF" --phase build; then
    if [ $NO_GPU = 1 ]; then
      run_phase info 30 5 0 node "$ROOT/dist/scripts/gpu-check-device.js" info --json "$RES/info.json"
      not_run "not run (no GPU)" $gpu_phases
    else
      # the plan: by priority, every phase whose share fits in what is left after the tail
      PLAN_LEFT=$(left)
      local room=$((PLAN_LEFT - TAIL)) p planned=""
      for p in $PRIORITY; do
        if [ $room -ge "${SHARE[$p]}" ]; then
          planned="$planned $p"
          room=$((room - SHARE[$p]))
        fi
      done
      PLANNED=""
      for p in $ORDER; do [[ " $planned " == *" $p "* ]] && PLANNED="$PLANNED $p"; done
      echo "gpu-check: planned after the build ($PLAN_LEFT s left, $TAIL s kept for PyTorch and the report):$PLANNED"
      local dev="$ROOT/dist/scripts/gpu-check-device.js" b7="$ROOT/dist/bench/gpu-7b.js" bmm="$ROOT/dist/bench/gpu-mm.js" t
      local bq4="$ROOT/dist/bench/gpu-q4k.js"
      phase info 30 5 node "$dev" info --json "$RES/info.json"
      phase tests 90 15 bash "$SELF" --phase tests
      phase parity 45 10 node "$dev" parity --json "$RES/parity.json"
      phase nccl 30 10 node "$ROOT/dist/scripts/nccl-check.js" --json "$RES/nccl.json"
      phase nccl-gpu 20 8 node "$dev" nccl-gpu --json "$RES/nccl-gpu.json"
      # each GEMM run stops timing 8 s before its phase ends, keeping what it measured
      t=$(budget gemm-lt 30)
      phase gemm-lt 30 12 node "$b7" gemm --budget $((t - 8)) --json "$RES/gemm-lt.json"
      t=$(budget gemm-own 30)
      phase gemm-own 30 12 env LLAMA_ADAPTER_GEMM=own node "$b7" gemm --budget $((t - 8)) --json "$RES/gemm-own.json"
      # the 7B benchmark: what is left but the later phases' shares and the tail; its own budget
      # ends 15 s sooner
      t=$(budget ours7b 150)
      phase ours7b 150 45 node "$b7" train --batches "$HERE/data/batches-7b.json" --budget $((t - 15)) --json "$RES/ours7b.json"
      # CLIP ViT-L/14 image encoder, bf16, batch 32 (issue 10); its runs stop 5 s before the phase ends
      t=$(budget clip 30)
      phase clip 30 15 node "$bmm" encode --shape L/14 --dtype bf16 --batch 32 --runs 5 --budget $((t - 5)) --json "$RES/clip.json"
      # the image-conditioned 7B step on CLIP ViT-L/14 features (issue 11), B = 4 and 16
      t=$(budget mm7b 50)
      phase mm7b 50 25 node "$bmm" train --batches "$HERE/data/batches-7b.json" --micro 4,16 --steps 3 --budget $((t - 5)) --json "$RES/mm7b.json"
      # the 7B adapter step on a Q4_K base (issue 13): B = 4, then 4 x 512 with checkpointing (the
      # <= 8 GB target), then B = 16 if time is left; its runs stop 5 s before the phase ends
      t=$(budget q4k7b 60)
      phase q4k7b 60 25 node "$bq4" train --batches "$HERE/data/batches-7b.json" --micro 4,16 --full 4 --steps 3 --budget $((t - 5)) --json "$RES/q4k7b.json"
    fi
  elif [ $NO_GPU = 1 ]; then
    not_run "not run (no GPU)" info $gpu_phases
  else
    # nothing else is worth the device time now: stop PyTorch's side (it would still time its
    # steps) and go straight to the report, leaving the time for a fix and a rerun
    if [ -n "$torch_pid" ]; then
      kill "$torch_pid" 2>/dev/null
      wait "$torch_pid" 2>/dev/null
      torch_pid=''
    fi
    not_run "not run (the build failed)" info tests parity nccl nccl-gpu gemm-lt gemm-own ours7b clip mm7b q4k7b torch
  fi

  if [ -n "$torch_pid" ]; then
    echo "=== torch (go: timed steps, GEMM, decode; $(elapsed) s elapsed, $(left) s left) ==="
    touch "$WORK/go"
    wait "$torch_pid"
    local rc=$?
    grep -v '^\s*$' "$OUT/torch.log" | tail -30
    echo $(($(date +%s) - torch_s0)) >"$RES/torch.seconds"
    elapsed >"$RES/torch.elapsed"
    if [ $rc -eq 0 ]; then
      status torch ok
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      status torch "timed out (the budget ended)"
    else
      status torch "failed (exit $rc)"
    fi
    echo "    (torch: $(cat "$RES/torch.seconds") s from its start in the background; $(elapsed) s of the device time elapsed)"
  fi

  echo "=== report ($(elapsed) s elapsed, $(left) s left) ==="
  if [ -x "$WORK/bin/node" ] && [ -f "$ROOT/dist/scripts/gpu-check.js" ]; then
    node "$ROOT/dist/scripts/gpu-check.js" report --results "$RES" --out "$OUT" --prepared "$HERE" $([ $NO_GPU = 1 ] && echo --no-gpu)
  else
    echo "no node to write the report with: the phases' status files follow"
    for f in "$RES"/*.status; do echo "$(basename "$f" .status): $(cat "$f")"; done
  fi
  echo "gpu-check: done in $(elapsed) s of the device time (budget $BUDGET s)"
  # exit status: 1 when a phase failed or ran out of its time (skipped and not-run phases do not count)
  ! grep -lqE '^(failed|timed out)' "$RES"/*.status
}

# a pipeline, so that bash waits for tee: the whole log is in $OUT before the command returns
main 2>&1 | tee -a "$OUT/gpu-check.log"
exit "${PIPESTATUS[0]}"
