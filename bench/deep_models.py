"""Deep models: ``sluice predict`` vs the loop a careful user writes vs Ray Data ``map_batches``.

Two workloads, each on a model made locally with random weights (nothing is downloaded):

* **text**: a BERT-style encoder (4 layers, hidden 256 by default) with a WordPiece tokenizer
  trained on generated text, embedding documents of 10-300 tokens from a Parquet file;
* **images**: a ResNet-style classifier in Hugging Face format labelling a directory of
  generated 224x224 JPEGs.

The three ways compute the same thing on the same inputs, one after the other in one run, each
in a process of its own timed whole (Python's start, imports and model load included):

* ``sluice predict`` (the CLI, as a user runs it; the engine's rows/s from ``_summary.json``),
  for text once with length bucketing and once without, to show the padding it saves;
* the careful loop: batches of 64 read with pyarrow, padded to the longest record of the batch,
  ``torch.inference_mode()``, mean pooling, written to Parquet;
* Ray Data: ``read_parquet`` / ``read_binary_files`` -> ``map_batches`` with an actor pool of the
  same model (2 actors, one per core) -> ``write_parquet``, on a local Ray started here on
  127.0.0.1.

Prints rows/s, the ratio to the careful loop, p50/p99 batch latency, CPU utilisation and the
padding waste (padded tokens / all tokens in the model's batches). Absolute figures drift on a
shared machine; the ratios within one run are the result. Usage::

    python bench/deep_models.py                      # text 100k documents, images 20k
    python bench/deep_models.py --docs 5000 --images 1000 --skip-ray   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

DATA_DIR = Path(__file__).resolve().parent / ".data" / "deep"
SEED = 20261203
LOOP_BATCH = 64
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Way:
    workload: str
    method: str
    rows_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_percent: float | None
    padding_waste: float | None = None
    engine_rows_per_s: float | None = None  # sluice's own figure: model load and start-up left out
    note: str = ""
    rows: int = 0


# -- inputs ------------------------------------------------------------------------------------


def _words(rng: np.random.Generator, count: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=int(rng.integers(2, 9)))) for _ in range(count)]


def make_documents(count: int) -> Path:
    """``count`` documents of 10-300 words (Zipf-like word frequencies) in one Parquet file."""
    path = DATA_DIR / f"docs-{count}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(SEED)
    vocab = np.array(_words(rng, 3000))
    weights = 1.0 / np.arange(1, vocab.size + 1)
    weights /= weights.sum()
    lengths = rng.integers(10, 301, size=count)
    words = rng.choice(vocab, size=int(lengths.sum()), p=weights)
    ends = np.cumsum(lengths)
    texts = [" ".join(words[end - n : end]) for end, n in zip(ends, lengths, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": np.arange(count, dtype=np.int64), "text": pa.array(texts, pa.string())})
    pq.write_table(table, path.with_suffix(".tmp"), row_group_size=8192)
    path.with_suffix(".tmp").rename(path)
    return path


def make_images(count: int) -> Path:
    """``count`` random 224x224 JPEGs in one directory."""
    from PIL import Image

    directory = DATA_DIR / f"images-{count}"
    if (directory / "_done").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / "jpg" / f"{i:06d}.jpg", quality=85)
    (directory / "_done").touch()
    return directory


def make_model(kind: str, *options: str) -> Path:
    directory = DATA_DIR / "models" / "-".join((kind, *(o.lstrip("-") for o in options)))
    if (directory / "config.json").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    command = [sys.executable, "-m", "sluice.models.deep.make", kind, str(directory), *options]
    subprocess.run(command, check=True)
    return directory


# -- the three ways -------------------------------------------------------------------------------


class CpuMeter:
    """CPU utilisation of this process tree over a block, as % of all cores."""

    def __enter__(self) -> CpuMeter:
        self.start = time.perf_counter()
        self.cpu = _tree_cpu()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.percent = 100.0 * (_tree_cpu() - self.cpu) / (self.seconds * CORES)


def _tree_cpu() -> float:
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def sluice_way(workload: str, model: Path, source: Path, *flags: str, label: str) -> Way:
    out = DATA_DIR / "out" / f"{workload}-{label}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "sluice", "predict", "--model", str(model), "--input", str(source)]
    command += ["--output", str(out), "--quiet", *flags]
    with CpuMeter() as meter:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "_summary.json").read_text())
    latency = summary.get("batch_latency_ms") or {}
    rows = int(summary["rows"])
    process_rate = rows / meter.seconds
    return Way(
        workload,
        f"sluice predict ({label})",
        process_rate,
        latency.get("p50"),
        latency.get("p99"),
        meter.percent,
        summary.get("padding_waste"),
        float(summary["rows_per_second"]),
        note=f"{rows} rows, {summary['rows_failed']} failed; batch {summary['batch_size']}",
    )


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def text_loop(model_dir: Path, docs: Path) -> Way:
    """The loop a careful user writes: batches of 64, padded to the longest, inference_mode."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    with CpuMeter() as meter:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        latencies: list[float] = []
        padded = real = rows = 0
        out: list[np.ndarray] = []
        for batch in pq.ParquetFile(docs).iter_batches(batch_size=LOOP_BATCH, columns=["text"]):
            start = time.perf_counter()
            enc = tokenizer(batch.column(0).to_pylist(), padding="longest", truncation=True, return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
            latencies.append(time.perf_counter() - start)
            real += int(enc["attention_mask"].sum())
            padded += int(enc["attention_mask"].numel()) - int(enc["attention_mask"].sum())
            rows += batch.num_rows
        embeddings = np.concatenate(out)
        pq.write_table(pa.table({"embedding": list(embeddings)}), DATA_DIR / "out" / "text-loop.parquet")
    p50, p99 = _percentiles(latencies)
    return Way(
        "text",
        "careful loop (64, longest)",
        rows / meter.seconds,
        p50,
        p99,
        meter.percent,
        padded / (padded + real),
        rows=rows,
    )


def image_loop(model_dir: Path, images: Path) -> Way:
    """The careful loop over a directory: decode 64 files, the image processor, inference_mode."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    files = sorted((images / "jpg").iterdir())
    with CpuMeter() as meter:
        processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForImageClassification.from_pretrained(model_dir, local_files_only=True).eval()
        latencies: list[float] = []
        labels: list[np.ndarray] = []
        for i in range(0, len(files), LOOP_BATCH):
            start = time.perf_counter()
            batch = [Image.open(f).convert("RGB") for f in files[i : i + LOOP_BATCH]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                labels.append(model(pixel_values=pixels).logits.softmax(-1).argmax(-1).numpy())
            latencies.append(time.perf_counter() - start)
    p50, p99 = _percentiles(latencies)
    return Way("images", "careful loop (64)", len(files) / meter.seconds, p50, p99, meter.percent, rows=len(files))


class _TextActor:
    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(1)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(list(batch["text"]), padding="longest", truncation=True, return_tensors="pt")
        with self.torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            embedding = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
        return {"id": batch["id"], "embedding": embedding}


class _ImageActor:
    def __init__(self, model_dir: str) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        torch.set_num_threads(1)
        self.torch = torch
        self.processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForImageClassification.from_pretrained(model_dir, local_files_only=True).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import io

        from PIL import Image

        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in batch["bytes"]]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with self.torch.inference_mode():
            probabilities = self.model(pixel_values=pixels).logits.softmax(-1)
        return {"path": batch["path"], "label": probabilities.argmax(-1).numpy()}


def ray_way(workload: str, model_dir: Path, source: Path) -> Way:
    import ray

    out = DATA_DIR / "out" / f"{workload}-ray"
    shutil.rmtree(out, ignore_errors=True)
    with CpuMeter() as meter:
        # one logical CPU beyond the cores for Ray Data's read and write tasks: with every CPU held
        # by the actors, the read task never schedules and the dataset waits forever
        ray.init(num_cpus=CORES + 1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            if workload == "text":
                # one Parquet row group is one block, which only one actor would see: split it
                ds = ray.data.read_parquet(str(source)).repartition(CORES * 8)
                actor: type = _TextActor
            else:
                ds = ray.data.read_binary_files(str(source / "jpg"), include_paths=True)
                actor = _ImageActor
            ds = ds.map_batches(
                actor,
                fn_constructor_args=(str(model_dir),),
                batch_size=LOOP_BATCH,
                compute=ray.data.ActorPoolStrategy(size=CORES),
                num_cpus=1,
            )
            ds.write_parquet(str(out))
            rows = int(ray.data.read_parquet(str(out)).count())
        finally:
            ray.shutdown()
    return Way(
        workload,
        f"Ray Data map_batches ({CORES} actors)",
        rows / meter.seconds,
        None,
        None,
        None,  # Ray's workers are not this process's children: their CPU is not counted
        note="incl. ray.init",
        rows=rows,
    )


def child_way(kind: str, workload: str, model_dir: Path, source: Path) -> Way:
    """The loop or Ray Data in a process of its own, timed whole as ``sluice predict`` is: Python's
    start and the imports of torch, transformers and Ray count for every way alike."""
    command = [sys.executable, __file__, "--child", kind, workload, str(model_dir), str(source)]
    with CpuMeter() as meter:
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    inner = Way(**json.loads(done.stdout.splitlines()[-1]))
    note = f"{inner.rows_per_s:.1f} rows/s after its imports" + (f"; {inner.note}" if inner.note else "")
    cpu = None if inner.cpu_percent is None else meter.percent  # a way that cannot count its CPU says None
    return replace(inner, rows_per_s=inner.rows / meter.seconds, cpu_percent=cpu, note=note)


def _run_child(kind: str, workload: str, model_dir: Path, source: Path) -> None:
    if kind == "loop":
        way = text_loop(model_dir, source) if workload == "text" else image_loop(model_dir, source)
    else:
        way = ray_way(workload, model_dir, source)
    print(json.dumps(asdict(way)))


# -- report ---------------------------------------------------------------------------------------


def _cell(value: float | None, fmt: str) -> str:
    width = int(fmt.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, fmt)


def print_table(ways: list[Way]) -> None:
    print(f"machine: {CORES} cores, load average {os.getloadavg()[0]:.1f} at the end of the run")
    header = f"{'workload':8} {'method':38} {'rows/s':>9} {'x loop':>7} {'engine':>8} {'x loop':>7}"
    header += f" {'p50 ms':>9} {'p99 ms':>9} {'CPU %':>6} {'padding':>8}  note"
    print(header)
    print("-" * len(header))
    loops = {w.workload: w.rows_per_s for w in ways if w.method.startswith("careful loop")}
    for w in ways:
        loop = loops.get(w.workload)
        ratio = w.rows_per_s / loop if loop else None
        engine_ratio = w.engine_rows_per_s / loop if loop and w.engine_rows_per_s else None
        waste = None if w.padding_waste is None else 100 * w.padding_waste
        percent = " " if waste is None else "%"
        print(
            f"{w.workload:8} {w.method:38} {w.rows_per_s:9.1f} {_cell(ratio, '7.2f')}"
            f" {_cell(w.engine_rows_per_s, '8.1f')} {_cell(engine_ratio, '7.2f')} {_cell(w.p50_ms, '9.1f')}"
            f" {_cell(w.p99_ms, '9.1f')} {_cell(w.cpu_percent, '6.0f')} {_cell(waste, '7.1f')}{percent}  {w.note}"
        )
    print(
        "rows/s: input rows per second of a whole process each (Python's start, imports and model load"
        " included); engine: sluice's own _summary.json rows_per_second, which leaves those out"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents for the text workload (0: skip it)")
    parser.add_argument("--images", type=int, default=20_000, help="images for the image workload (0: skip it)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--skip-ray", action="store_true", help="leave out Ray Data")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "WORKLOAD", "MODEL", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    (DATA_DIR / "out").mkdir(parents=True, exist_ok=True)
    if args.child:
        kind, workload, model_dir, source = args.child
        _run_child(kind, workload, Path(model_dir), Path(source))
        return
    ways: list[Way] = []
    if args.docs:
        docs = make_documents(args.docs)
        heads = ["--heads", str(max(1, args.hidden // 64))]
        model = make_model("text-embedding", "--layers", str(args.layers), "--hidden", str(args.hidden), *heads)
        ways.append(child_way("loop", "text", model, docs))
        ways.append(sluice_way("text", model, docs, "--key-column", "id", label="bucketed"))
        ways.append(sluice_way("text", model, docs, "--key-column", "id", "--no-bucketing", label="no bucketing"))
        if not args.skip_ray:
            ways.append(child_way("ray", "text", model, docs))
    if args.images:
        images = make_images(args.images)
        model = make_model("image-classification", "--size", "resnet18")
        ways.append(child_way("loop", "images", model, images))
        ways.append(sluice_way("images", model, images / "jpg", "--batch-size", "64", label="directory, batch 64"))
        if not args.skip_ray:
            ways.append(child_way("ray", "images", model, images))
    print_table(ways)


if __name__ == "__main__":
    main()
