#!/usr/bin/env bash
# The GPU check on the device machine. scripts/gpu-check.ts (`npm run gpu:check`) copies this file to
# .gpu-check/run.sh beside what it prepared (node, node_modules, dist, data); the lead then gives the
# device tool, from the repository root:   bash .gpu-check/run.sh     with carry [".gpu-check"].
#
# One call of at most 10 minutes: every phase runs under `timeout` with its own budget, taken from
# what is left of GPU_CHECK_BUDGET (default 540 s) after the shares of the phases that follow (each
# phase's least useful time, SHARE below), so a slow phase is cut and the later ones still run; a
# phase with too little time left is skipped and says so. A failed build skips to the report, which
# runs last, whatever happened before it.
#
#   env       the machine (GPU, nvcc, cmake), cuBLASLt and NCCL found in python3's nvidia wheels
#   node      the carried node binary, unpacked (xz, or python3's lzma)
#   torch     in the background from the start: PEFT's side (bench/torch_peft_step.py) imports, builds
#             its model and runs one untimed step while the addon compiles, then waits for `go`
#   build     the addon: CMake (+ Ninja) with nvcc, sm_90, into a temp dir (never build/Release)
#   info      capabilities() of that build
#   tests     mocha on the backend-parametrised op tests (the cuda backend is the real GPU here)
#   parity    training steps cpu vs cuda on stories260K (scripts/gpu-check-device.ts)
#   nccl      one stories260K training step through NCCL, one rank, and the 7B adapter's all-reduce
#             of host tensors (scripts/nccl-check.ts); nccl-gpu: the same all-reduce of GPU tensors
#   gemm-lt, gemm-own   GEMM rates at the 7B shapes: cuBLASLt, then our own kernel
#   ours7b    the random-weight 7B benchmark (bench/gpu-7b.ts train): steps, MFU, memory, decode
#   clip      the CLIP ViT-L/14 image encoder, random bf16 weights, batch 32 (bench/gpu-mm.ts encode)
#   mm7b      the 7B image-conditioned step on CLIP ViT-L/14 features (bench/gpu-mm.ts train)
#   q4k7b     the 7B adapter step on a Q4_K base, random blocks uploaded per layer (bench/gpu-q4k.ts):
#             B = 4, 4 x 512 with checkpointing (the <= 8 GB target), B = 16
#   torch     go: PEFT's timed steps, GEMM and decode (the GPU is ours no more)
#   report    one table: stdout, $OUT/gpu-check.md, $OUT/gpu-check.json (+ gpu-check.log, build.log,
#             tests.log, torch.log: six files, of the eight that may come back)
#
# Options: --no-gpu  for a machine without a GPU (gpu-check.ts --dry-run): env, node, build and info
#                    run, every GPU phase is reported "not run (no GPU)"
#          --budget S
# Environment: OUT (results; default .gpu-check/out), GPU_CHECK_WORK (scratch; default a new
# /tmp/gpu-check.XXXXXX), GPU_CHECK_TESTS (mocha files relative to the staged root, default
# dist/test/backend*.test.js and dist/test/*cuda*.test.js), GPU_CHECK_JOBS (build jobs),
# LLAMA_ADAPTER_CUBLASLT / LLAMA_ADAPTER_NCCL (else found in the wheels).
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
      if command -v xz >/dev/null; then
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
        echo "cmake -S $REPO -B $WORK/build ${GEN[*]} ... (nvcc $NVCC, $JOBS jobs)"
        cmake -S "$REPO" -B "$WORK/build" "${GEN[@]}" \
          -DCMAKE_BUILD_TYPE=Release \
          -DCMAKE_JS_INC="$HERE/node_modules/node-api-headers/include" \
          -DCMAKE_CXX_FLAGS=-DBUILDING_NODE_EXTENSION \
          -DCMAKE_CUDA_COMPILER="$NVCC" \
          -DLLAMA_ADAPTER_CUDA=ON \
          -DLLAMA_ADAPTER_MPI=OFF \
          -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$ROOT/build/Release" &&
          cmake --build "$WORK/build" -j "$JOBS"
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
BUDGET=${GPU_CHECK_BUDGET:-540}
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
mkdir -p "$RES" "$ROOT"

status() { echo "$2" >"$RES/$1.status"; echo "--- $1: $2"; }
left() { echo $((DEADLINE - $(date +%s))); }

# run_phase NAME CAP NEED RESERVE CMD...: at most CAP seconds, and never into the last RESERVE
# seconds of the budget; skipped when fewer than NEED seconds are left for it.
run_phase() {
  local name=$1 cap=$2 need=$3 reserve=$4
  shift 4
  local avail=$(($(left) - reserve))
  local t=$((cap < avail ? cap : avail))
  if [ $t -lt "$need" ]; then
    status "$name" "skipped: out of time ($(left) s of the budget left)"
    return 3
  fi
  echo "=== $name (budget ${t} s, $(left) s left) ==="
  local s0 rc
  s0=$(date +%s)
  timeout -k 5 "$t" "$@" 2>&1 | tee "$RES/$name.out"
  rc=${PIPESTATUS[0]}
  echo $(($(date +%s) - s0)) >"$RES/$name.seconds"
  if [ $rc -eq 0 ]; then
    status "$name" ok
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status "$name" "timed out after ${t} s"
  else
    status "$name" "failed (exit $rc)"
  fi
  return $rc
}
not_run() {
  local why=$1
  shift
  for p in "$@"; do status "$p" "$why"; done
}

main() {
  echo "gpu-check: $(date -u +%FT%TZ), budget ${BUDGET} s, work $WORK, results $OUT$([ $NO_GPU = 1 ] && echo ', --no-gpu')"
  [ -f "$HERE/manifest.json" ] && python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print("gpu-check: prepared %s from %s, node %s" % (m.get("prepared"), m.get("git"), m.get("node")))' "$HERE/manifest.json"

  run_phase env 30 5 0 bash "$SELF" --phase env
  if [ -f "$RES/env.json" ]; then
    pick() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2]) or "")' "$RES/env.json" "$1"; }
    [ -n "${LLAMA_ADAPTER_CUBLASLT:-}" ] || { v=$(pick cublasLt); [ -n "$v" ] && export LLAMA_ADAPTER_CUBLASLT=$v; }
    [ -n "${LLAMA_ADAPTER_NCCL:-}" ] || { v=$(pick nccl); [ -n "$v" ] && export LLAMA_ADAPTER_NCCL=$v; }
  fi
  echo "gpu-check: LLAMA_ADAPTER_CUBLASLT=${LLAMA_ADAPTER_CUBLASLT:-(unset)} LLAMA_ADAPTER_NCCL=${LLAMA_ADAPTER_NCCL:-(unset)}"
  export LLAMA_ADAPTER_DATA=$HERE/data

  run_phase node 60 5 0 bash "$SELF" --phase node
  export PATH=$WORK/bin:$PATH

  # PEFT's side starts now and waits for $WORK/go before it times anything
  local torch_pid='' torch_s0
  if [ $NO_GPU = 0 ]; then
    echo "=== torch (in the background: set-up now, timed steps after ours) ==="
    torch_s0=$(date +%s)
    timeout -k 5 $(($(left) - 15)) python3 "$REPO/bench/torch_peft_step.py" --batches "$HERE/data/batches-7b.json" \
      --json "$RES/torch.json" --go "$WORK/go" --deadline $((DEADLINE - 20)) >"$OUT/torch.log" 2>&1 &
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

  local gpu_phases="tests parity nccl nccl-gpu gemm-lt gemm-own ours7b clip mm7b q4k7b torch"
  # Every phase after the build keeps a share of the budget (its least useful time, which the phases
  # before it may not eat into), then gets what those leave, up to its own cap. TAIL: PyTorch's timed
  # part (60 s) and the report (15 s).
  local -A SHARE=([info]=5 [tests]=15 [parity]=10 [nccl]=10 [nccl-gpu]=10 [gemm-lt]=15 [gemm-own]=15 [ours7b]=45 [clip]=20 [mm7b]=35 [q4k7b]=30)
  local ORDER="info tests parity nccl nccl-gpu gemm-lt gemm-own ours7b clip mm7b q4k7b" TAIL=75
  # reserve NAME: the shares of the phases after NAME, and the tail
  reserve() {
    local r=$TAIL seen=0 p
    for p in $ORDER; do
      [ $seen = 1 ] && r=$((r + SHARE[$p]))
      [ "$p" = "$1" ] && seen=1
    done
    echo $r
  }
  # budget NAME CAP: what NAME may use now (run_phase applies the same rule)
  budget() {
    local t=$(($(left) - $(reserve "$1")))
    echo $((t < $2 ? t : $2))
  }
  # the device builds with 14 jobs in a few minutes: up to 330 s, less the shares of everything
  # after it (about 250 s of a 540 s budget); a machine without a GPU (the dry run) may be slower,
  # and there the build is all there is to time
  local build_cap=330 build_reserve=$(($(reserve info) + SHARE[info]))
  [ $NO_GPU = 1 ] && build_cap=$((BUDGET - 40)) build_reserve=30
  if run_phase build $build_cap 30 $build_reserve bash "$SELF" --phase build; then
    run_phase info 30 5 "$(reserve info)" node "$ROOT/dist/scripts/gpu-check-device.js" info --json "$RES/info.json"
    if [ $NO_GPU = 1 ]; then
      not_run "not run (no GPU)" $gpu_phases
    else
      local dev="$ROOT/dist/scripts/gpu-check-device.js" b7="$ROOT/dist/bench/gpu-7b.js" bmm="$ROOT/dist/bench/gpu-mm.js" t
      local bq4="$ROOT/dist/bench/gpu-q4k.js"
      run_phase tests 120 15 "$(reserve tests)" bash "$SELF" --phase tests
      run_phase parity 60 10 "$(reserve parity)" node "$dev" parity --json "$RES/parity.json"
      run_phase nccl 45 10 "$(reserve nccl)" node "$ROOT/dist/scripts/nccl-check.js" --json "$RES/nccl.json"
      run_phase nccl-gpu 30 10 "$(reserve nccl-gpu)" node "$dev" nccl-gpu --json "$RES/nccl-gpu.json"
      # each GEMM run stops timing 10 s before its phase ends, keeping what it measured
      t=$(budget gemm-lt 45)
      run_phase gemm-lt 45 15 "$(reserve gemm-lt)" node "$b7" gemm --budget $((t - 10)) --json "$RES/gemm-lt.json"
      t=$(budget gemm-own 45)
      run_phase gemm-own 45 15 "$(reserve gemm-own)" env LLAMA_ADAPTER_GEMM=own node "$b7" gemm --budget $((t - 10)) --json "$RES/gemm-own.json"
      # the 7B benchmark: what is left but the image phases' shares, PyTorch's part and the report;
      # its own budget ends 15 s sooner
      t=$(budget ours7b 240)
      run_phase ours7b 240 45 "$(reserve ours7b)" node "$b7" train --batches "$HERE/data/batches-7b.json" --budget $((t - 15)) --json "$RES/ours7b.json"
      # CLIP ViT-L/14 image encoder, bf16, batch 32 (issue 10); its runs stop 5 s before the phase ends
      t=$(budget clip 40)
      run_phase clip 40 20 "$(reserve clip)" node "$bmm" encode --shape L/14 --dtype bf16 --batch 32 --runs 5 --budget $((t - 5)) --json "$RES/clip.json"
      # the image-conditioned 7B step on CLIP ViT-L/14 features (issue 11), B = 4 and 16
      t=$(budget mm7b 60)
      run_phase mm7b 60 35 "$(reserve mm7b)" node "$bmm" train --batches "$HERE/data/batches-7b.json" --micro 4,16 --steps 3 --budget $((t - 5)) --json "$RES/mm7b.json"
      # the 7B adapter step on a Q4_K base (issue 13): B = 4, then 4 x 512 with checkpointing (the
      # <= 8 GB target), then B = 16 if time is left; its runs stop 5 s before the phase ends
      t=$(budget q4k7b 75)
      run_phase q4k7b 75 30 "$(reserve q4k7b)" node "$bq4" train --batches "$HERE/data/batches-7b.json" --micro 4,16 --full 4 --steps 3 --budget $((t - 5)) --json "$RES/q4k7b.json"
    fi
  elif [ $NO_GPU = 1 ]; then
    not_run "not run (no GPU)" info $gpu_phases
  else
    not_run "not run (the build failed)" info tests parity nccl nccl-gpu gemm-lt gemm-own ours7b clip mm7b q4k7b
  fi

  if [ -n "$torch_pid" ]; then
    echo "=== torch (go: timed steps, GEMM, decode; $(left) s left) ==="
    touch "$WORK/go"
    wait "$torch_pid"
    local rc=$?
    grep -v '^\s*$' "$OUT/torch.log" | tail -30
    echo $(($(date +%s) - torch_s0)) >"$RES/torch.seconds"
    if [ $rc -eq 0 ]; then
      status torch ok
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      status torch "timed out (the budget ended)"
    else
      status torch "failed (exit $rc)"
    fi
  fi

  echo "=== report ($(left) s left) ==="
  if [ -x "$WORK/bin/node" ] && [ -f "$ROOT/dist/scripts/gpu-check.js" ]; then
    node "$ROOT/dist/scripts/gpu-check.js" report --results "$RES" --out "$OUT" --prepared "$HERE" $([ $NO_GPU = 1 ] && echo --no-gpu)
  else
    echo "no node to write the report with: the phases' status files follow"
    for f in "$RES"/*.status; do echo "$(basename "$f" .status): $(cat "$f")"; done
  fi
  echo "gpu-check: done in $(($(date +%s) - START)) s"
  # exit status: 1 when a phase failed or ran out of its time (skipped and not-run phases do not count)
  ! grep -lqE '^(failed|timed out)' "$RES"/*.status
}

# a pipeline, so that bash waits for tee: the whole log is in $OUT before the command returns
main 2>&1 | tee -a "$OUT/gpu-check.log"
exit "${PIPESTATUS[0]}"
