#!/usr/bin/env bash
# Sluice on a GPU machine: set-up, cuda-vs-cpu equality, out-of-memory back-off, memory limit,
# and a throughput and GPU-utilisation table, in one run of under 8 minutes.
#
#   bash bench/gpu_check.sh              # the whole check, from the repository root
#   bash bench/gpu_check.sh --cpu-only   # the same steps on the CPU alone, small sizes: a dry run anywhere
#
# What it assumes of the machine (it needs no network):
# - Python: $SLUICE_PYTHON if set; else the project venv (.venv/bin/python) when it imports torch;
#   else python3. On a GPU machine that Python's torch is a CUDA build.
# - Sluice's own dependencies importable by that Python. Those missing from an image that holds
#   PyTorch but not Sluice (pydantic, pydantic-core, annotated-types, typing-inspection) are
#   installed from wheels in .whl/ when that folder exists; fetch them beforehand, where there is
#   network, for the target's Python (3.12 here):
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic pydantic-core annotated-types typing-inspection
# - nvidia-ml-py (Sluice's `gpu` extra) for the GPU figures of each run's _summary.json; without
#   it they are null and the summary says why.
# - ONNX Runtime's CUDA provider (onnxruntime-gpu) for the ONNX equality; without it that step
#   is skipped, saying so. The onnx package builds the ONNX model.
# - The Hugging Face text model comes from `python -m sluice.models.deep.make text-embedding`,
#   and the TorchScript model needs Sluice's PyTorch-program loader; a checkout without either
#   skips that step, saying so.
#
# Everything is written under $GPU_CHECK_DIR (default /tmp/sluice-gpu-check); when $OUT is set
# (a device machine's output folder) the table and the log are copied there.
# Exit status: 0 when every check that ran passed, 1 when one failed, 2 when set-up failed.

set -uo pipefail

CPU_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --cpu-only) CPU_ONLY=1 ;;
        -h | --help)
            sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "gpu_check: unknown argument '$arg' (use --cpu-only or --help)" >&2
            exit 2
            ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${GPU_CHECK_DIR:-/tmp/sluice-gpu-check}
RESULTS="$WORK/results.tsv"
LOG="$WORK/log.txt"
FAILED=0
STARTED=$SECONDS

# Sizes: enough rows for a steady throughput figure on a GPU; small ones for a CPU dry run.
if ((CPU_ONLY)); then
    NUMERIC_ROWS=20000 TORCH_ROWS=5000 TEXT_DOCS=300 GPU_DEVICE=cpu
else
    NUMERIC_ROWS=1000000 TORCH_ROWS=200000 TEXT_DOCS=20000 GPU_DEVICE=cuda
fi

say() { printf '[%4ds] %s\n' "$((SECONDS - STARTED))" "$*" | tee -a "$LOG"; }
fail() {
    say "FAIL: $*"
    FAILED=1
}

pick_python() {
    if [[ -n ${SLUICE_PYTHON:-} ]]; then
        PY=$SLUICE_PYTHON
    elif [[ -x "$ROOT/.venv/bin/python" ]] && "$ROOT/.venv/bin/python" -c 'import torch' 2>/dev/null; then
        PY="$ROOT/.venv/bin/python"
    else
        PY=python3
    fi
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
}

install_missing() {
    local deps='import numpy, pyarrow, onnxruntime, fsspec, pydantic, typer, rich, psutil, yaml, torch, onnx'
    "$PY" -c "$deps" 2>/dev/null && return 0
    if [[ -d "$ROOT/.whl" ]]; then
        say "installing the carried wheels in .whl/ into $WORK/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$ROOT"/.whl/*.whl >>"$LOG" 2>&1
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
    fi
    if ! "$PY" -c "$deps" 2>>"$LOG"; then
        say "set-up failed: $PY cannot import Sluice's dependencies (see $LOG; the header says what to carry)"
        exit 2
    fi
}

report_setup() {
    "$PY" - "$CPU_ONLY" <<'PY' 2>&1 | tee -a "$LOG"
import sys

import onnxruntime as ort
import torch

import sluice

cpu_only = sys.argv[1] == "1"
print(f"python {sys.version.split()[0]}, sluice {sluice.__version__}, torch {torch.__version__}, "
      f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
elif not cpu_only:
    sys.exit("set-up failed: torch sees no CUDA device (run with --cpu-only for a CPU dry run)")
else:
    print("GPU: none used (--cpu-only)")
PY
    [[ ${PIPESTATUS[0]} -eq 0 ]] || exit 2
}

make_data() {
    "$PY" - "$WORK" "$NUMERIC_ROWS" "$TORCH_ROWS" "$TEXT_DOCS" <<'PY'
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

work, numeric_rows, torch_rows, text_docs = Path(sys.argv[1]), *map(int, sys.argv[2:])
rng = np.random.default_rng(0)


def numeric(rows: int) -> pa.Table:
    x = rng.normal(size=(rows, 32)).astype(np.float32)
    return pa.table({"id": np.arange(rows), **{f"f{j}": x[:, j] for j in range(32)}})


pq.write_table(numeric(numeric_rows), work / "numeric.parquet")
pq.write_table(numeric(torch_rows), work / "torch.parquet")
pq.write_table(numeric(256), work / "oom.parquet")
words = [f"w{i}" for i in range(5000)] + ["the", "a", "of", "and", "to", "in", "model", "batch", "data"]
lengths = rng.integers(10, 300, size=text_docs)
docs = [" ".join(rng.choice(words, size=n)) for n in lengths]
pq.write_table(pa.table({"id": np.arange(text_docs), "text": docs}), work / "text.parquet")
PY
}

make_models() {
    mkdir -p "$WORK/models"
    "$PY" - "$WORK/models" <<'PY'
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

out = Path(sys.argv[1])
rng = np.random.default_rng(1)
sizes = [32, 256, 256, 8]
weights, nodes, last = [], [], "x"
for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
    weights += [numpy_helper.from_array(rng.normal(scale=a**-0.5, size=(a, b)).astype(np.float32), f"w{i}"),
                numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
    nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
    last = f"a{i}"
    if i < len(sizes) - 2:
        nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
        last = f"r{i}"
nodes.append(helper.make_node("Identity", [last], ["y"]))
graph = helper.make_graph(
    nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], weights,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, out / "mlp.onnx")

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                          torch.nn.Linear(256, 1)).eval()
torch.jit.save(torch.jit.script(net), out / "mlp.pt")
PY
    # A torch module wrapped as a Python model: its device comes from the environment.
    cat >"$WORK/models/check_torch_mlp.py" <<'PY'
import os

import torch

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cpu")


class Mlp:
    def setup(self):
        torch.manual_seed(0)
        layers = [torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                  torch.nn.Linear(256, 1)]
        self.net = torch.nn.Sequential(*layers).to(DEVICE).eval()

    def predict(self, x):
        with torch.inference_mode():
            return self.net(torch.from_numpy(x).float().to(DEVICE))[:, 0].double().cpu().numpy()
PY
    # 6 GiB of device memory a record: 64 and 32 records run out of memory on a 141 GB card, 16 fit.
    cat >"$WORK/models/check_cuda_oom.py" <<'PY'
import os

import torch

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cpu")
PER_ROW = (6 << 30) // 4 if DEVICE.startswith("cuda") else 16


def predict(x):
    scratch = torch.ones((x.shape[0], PER_ROW), dtype=torch.float32, device=DEVICE)
    if DEVICE == "cpu" and x.shape[0] > 16:  # the dry run: the same halvings, raised as CUDA would
        raise torch.OutOfMemoryError(f"CUDA out of memory (simulated on CPU): {x.shape[0]} records")
    return (torch.from_numpy(x).to(DEVICE).sum(dim=1) + scratch[:, 0] - 1).double().cpu().numpy()
PY
    if "$PY" -c 'import sluice.models.deep.make' 2>/dev/null; then
        "$PY" -m sluice.models.deep.make text-embedding "$WORK/models/text-embedding" >>"$LOG" 2>&1 ||
            fail "python -m sluice.models.deep.make text-embedding failed (see $LOG)"
    else
        say "SKIP: the Hugging Face text model: this checkout has no sluice.models.deep.make"
    fi
}

# predict NAME DEVICE MODEL INPUT [FLAG...]: one `sluice predict`, its summary kept as NAME-DEVICE.
predict() {
    local name=$1 device=$2 model=$3 input=$4
    shift 4
    local out="$WORK/out/$name-$device"
    rm -rf "$out"
    if ! (cd "$WORK/models" && GPU_CHECK_DEVICE=$device timeout 240 "$PY" -m sluice predict -m "$model" \
        -i "$WORK/$input" -o "$out" --key-column id --device "${device%%:*}" -q "$@") >>"$LOG" 2>&1; then
        say "run $name on $device failed: $(tail -n 1 "$LOG")"
        return 1
    fi
    printf '%s\t%s\t%s\n' "$name" "$device" "$out" >>"$RESULTS"
    say "ran $name on $device"
}

# equal NAME: the outputs of NAME on cpu and on the GPU device agree within 1e-4.
equal() {
    "$PY" - "$WORK/out/$1-cpu" "$WORK/out/$1-$GPU_DEVICE" "$1" <<'PY' 2>&1 | tee -a "$LOG"
import sys

import numpy as np
import pyarrow.parquet as pq

a, b = (pq.read_table(p) for p in sys.argv[1:3])
if a.column("id").to_pylist() != b.column("id").to_pylist():
    sys.exit(f"{sys.argv[3]}: the runs hold different records")
worst = 0.0
for name in a.column_names:
    if name == "id":
        continue
    x = np.asarray(a.column(name).combine_chunks().flatten() if a.schema.field(name).type.num_fields else a.column(name),
                   dtype=np.float64)
    y = np.asarray(b.column(name).combine_chunks().flatten() if b.schema.field(name).type.num_fields else b.column(name),
                   dtype=np.float64)
    worst = max(worst, float(np.abs(x - y).max()) if x.size else 0.0)
print(f"{sys.argv[3]}: {a.num_rows:,} records, max abs difference cpu vs gpu {worst:.2e}")
sys.exit(0 if worst <= 1e-4 else f"{sys.argv[3]}: max abs difference {worst:.2e} > 1e-4")
PY
    [[ ${PIPESTATUS[0]} -eq 0 ]] || fail "$1: cpu and $GPU_DEVICE outputs differ"
}

check_onnx() {
    if ((!CPU_ONLY)) && ! "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
        say "SKIP: ONNX cuda vs cpu: this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)"
        predict onnx-mlp cpu mlp.onnx numeric.parquet --batch-size 4096
        return
    fi
    predict onnx-mlp cpu mlp.onnx numeric.parquet --batch-size 4096 &&
        { ((CPU_ONLY)) || predict onnx-mlp "$GPU_DEVICE" mlp.onnx numeric.parquet --batch-size 4096; } &&
        { ((CPU_ONLY)) || equal onnx-mlp; }
}

check_torch() {
    predict torch-mlp cpu check_torch_mlp:Mlp torch.parquet --batch-size 4096 --workers 2 || fail "torch-mlp on cpu"
    if ((!CPU_ONLY)); then
        predict torch-mlp "$GPU_DEVICE" check_torch_mlp:Mlp torch.parquet --batch-size 4096 --workers 2 &&
            equal torch-mlp
    fi
    if predict torchscript-mlp cpu mlp.pt torch.parquet --batch-size 4096; then
        ((CPU_ONLY)) || { predict torchscript-mlp "$GPU_DEVICE" mlp.pt torch.parquet --batch-size 4096 && equal torchscript-mlp; }
    else
        say "SKIP: TorchScript cuda vs cpu: this checkout cannot run mlp.pt (see the line above)"
    fi
}

check_hf() {
    [[ -d "$WORK/models/text-embedding" ]] || return 0
    predict hf-embedding cpu "$WORK/models/text-embedding" text.parquet --batch-size 64 || fail "hf-embedding on cpu"
    if ((!CPU_ONLY)); then
        predict hf-embedding "$GPU_DEVICE" "$WORK/models/text-embedding" text.parquet --batch-size 256 &&
            equal hf-embedding
    fi
}

# summary_field RUN FIELD: one figure of a run's _summary.json.
summary_field() {
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1] + "/_summary.json"))[sys.argv[2]])' "$1" "$2"
}

check_oom_backoff() {
    predict cuda-oom "$GPU_DEVICE" check_cuda_oom:predict oom.parquet --batch-size 64 --workers 1 || {
        fail "the out-of-memory run did not complete"
        return
    }
    local out="$WORK/out/cuda-oom-$GPU_DEVICE" got
    got="$(summary_field "$out" rows) $(summary_field "$out" oom_backoffs) $(summary_field "$out" final_batch_size)"
    if [[ $got == "256 2 16" ]]; then
        say "out-of-memory back-off: 256 records, 2 halvings (64 -> 32 -> 16), final batch 16"
    else
        fail "out-of-memory back-off: expected 'rows backoffs final' = '256 2 16', found '$got'"
    fi
}

check_memory_limit() {
    predict torch-mlp-limit "$GPU_DEVICE" check_torch_mlp:Mlp torch.parquet --memory-limit 64MiB --workers 2 || {
        fail "the memory-limit run did not complete"
        return
    }
    say "memory limit 64MiB: batch $(summary_field "$WORK/out/torch-mlp-limit-$GPU_DEVICE" batch_size):" \
        "$(summary_field "$WORK/out/torch-mlp-limit-$GPU_DEVICE" batch_size_reason)"
}

table() {
    "$PY" - "$RESULTS" <<'PY' | tee "$WORK/table.txt"
import json
import sys

rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
head = ("run", "device", "rows", "seconds", "rows/s", "batch", "final", "OOM", "CPU use", "GPU use", "GPU peak MiB")
print(f"{head[0]:<16}" + "  ".join(f"{h:>12}" for h in head[1:]))
for name, device, out in rows:
    s = json.load(open(f"{out}/_summary.json"))
    peak = s.get("gpu_peak_memory_bytes")
    gpu = s.get("gpu_utilization")
    cells = (name, device, f"{s['rows']:,}", f"{s['seconds']:.2f}", f"{s['rows_per_second']:,.0f}", s["batch_size"],
             s.get("final_batch_size"), s.get("oom_backoffs"), f"{s['cpu_utilization']:.0%}",
             "n/a" if gpu is None else f"{gpu:.0%}", "n/a" if peak is None else f"{peak / 2**20:,.0f}")
    print(f"{cells[0]:<16}" + "  ".join(f"{c!s:>12}" for c in cells[1:]))
reasons = {json.load(open(f"{out}/_summary.json")).get("gpu_unavailable_reason") for _, _, out in rows} - {None}
for reason in sorted(reasons):
    print(f"GPU columns n/a: {reason}")
PY
}

main() {
    rm -rf "$WORK"
    mkdir -p "$WORK/out"
    : >"$RESULTS"
    : >"$LOG"
    pick_python
    install_missing
    report_setup
    say "making data ($NUMERIC_ROWS numeric rows, $TORCH_ROWS torch rows, $TEXT_DOCS documents) and models"
    make_data || exit 2
    make_models || exit 2
    check_onnx
    check_torch
    check_hf
    check_oom_backoff
    check_memory_limit
    table
    if [[ -n ${OUT:-} ]]; then
        cp "$WORK/table.txt" "$LOG" "$OUT/" 2>/dev/null || true
    fi
    say "done in $((SECONDS - STARTED)) s: $( ((FAILED)) && echo 'a check FAILED' || echo 'every check that ran passed')"
    return "$FAILED"
}

main
