"""Hugging Face text models: ``feature-extraction`` and ``text-classification``.

The model takes one BYTES input, ``text`` (a string column, or BYTES tensors over the server).
:meth:`HfTextModel.prepare` tokenizes a batch with the fast tokenizer (in batch mode, off the
model's thread), truncating at ``max_length`` and counting the records it truncated;
:meth:`HfTextModel.predict` splits the batch into forward passes, pads each to its longest
record and puts every output back at its row (see :mod:`~sluice.models.deep.text_batches`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sluice.errors import ModelLoadError, PredictError
from sluice.models.base import Model, ModelSource, Prepared
from sluice.models.config import TextConfig
from sluice.models.deep.device import apply_threads, compute_dtype, resolve_device
from sluice.models.deep.hf import check_weights, require_file
from sluice.models.deep.text_batches import forward_passes, pad_rows, padding_counts, row_lengths
from sluice.models.signature import Signature, TensorSpec

__all__ = ["TEXT_INPUT", "HfTextModel", "load_feature_extractor", "load_text_classifier"]

TEXT_INPUT = "text"
"""The name of a text model's one input."""

# forward passes per batch when the job leaves the batch size to the engine (Model.preferred_batch_size)
PASSES_PER_BATCH = 8
_TOKENIZER = "tokenizer.json"
_TOKENIZER_CONFIG = "tokenizer_config.json"
_UNBOUNDED = 1_000_000  # transformers' stand-in model_max_length for "no limit" is ~1e30


@dataclass(frozen=True)
class _Tokenizer:
    """A private copy of the directory's fast tokenizer, truncating at ``max_length``."""

    backend: Any  # tokenizers.Tokenizer
    pad_id: int
    max_length: int


def _tokenizer_settings(directory: Path) -> dict[str, Any]:
    path = directory / _TOKENIZER_CONFIG
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a readable JSON file: {exc}") from exc
    return data if isinstance(data, dict) else {}


def load_tokenizer(directory: Path, hf_config: Mapping[str, Any], settings: TextConfig) -> _Tokenizer:
    """The fast tokenizer of ``directory`` (tokenizer.json), with truncation at the run's ``max_length``."""
    from tokenizers import Tokenizer

    path = require_file(
        directory, _TOKENIZER, "the fast tokenizer", "; save the tokenizer with tokenizer.save_pretrained(DIR)"
    )
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ModelLoadError(f"cannot read the tokenizer {path}: {exc}") from exc
    extra = _tokenizer_settings(directory)
    max_length = _max_length(settings, extra, hf_config)
    backend.no_padding()
    backend.enable_truncation(max_length)
    return _Tokenizer(backend, _pad_id(backend, extra, hf_config, path), max_length)


def _max_length(settings: TextConfig, extra: Mapping[str, Any], hf_config: Mapping[str, Any]) -> int:
    positions = hf_config.get("max_position_embeddings")
    limit = int(positions) if isinstance(positions, int) else None
    if settings.max_length is not None:
        if limit is not None and settings.max_length > limit:
            raise ModelLoadError(
                f"`max_length` {settings.max_length} is more than the model's max_position_embeddings {limit}",
                params=("max_length",),
            )
        return settings.max_length
    declared = extra.get("model_max_length")
    candidates = [v for v in (limit, declared) if isinstance(v, int | float) and v < _UNBOUNDED]
    return int(min(candidates)) if candidates else 512


def _pad_id(backend: Any, extra: Mapping[str, Any], hf_config: Mapping[str, Any], path: Path) -> int:
    token = extra.get("pad_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str) and backend.token_to_id(token) is not None:
        return int(backend.token_to_id(token))
    if isinstance(hf_config.get("pad_token_id"), int):
        return int(hf_config["pad_token_id"])
    raise ModelLoadError(
        f"{path}: the tokenizer names no padding token; set pad_token in {_TOKENIZER_CONFIG} or pad_token_id "
        "in config.json"
    )


@dataclass(frozen=True)
class _Head:
    """What a task makes of the encoder's output: its output tensors and the function computing them."""

    outputs: tuple[TensorSpec, ...]
    compute: Callable[[Any, torch.Tensor], dict[str, torch.Tensor]]  # (model output, attention mask) -> outputs
    finish: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = lambda outputs: outputs


class HfTextModel(Model):
    """A Hugging Face text model (a transformers module and its fast tokenizer) with one head.

    ``predict`` runs torch, which releases the GIL, under ``inference_mode``: it may run from
    several threads at once.
    """

    concurrency = "threads"

    def __init__(self, source: ModelSource, module: Any, tokenizer: _Tokenizer, head: _Head) -> None:
        self.source = source
        self.settings = source.config.text
        self.device = next(module.parameters()).device
        self._module = module
        self._tokenizer = tokenizer
        self._head = head
        self.signature = Signature((TensorSpec(TEXT_INPUT, np.dtype(object), (-1,)),), head.outputs)

    @property
    def preferred_batch_size(self) -> int:
        """Eight forward passes: enough records for length bucketing to pair like lengths, few
        enough that every worker gets batches (one batch is seconds of CPU work, not milliseconds)."""
        return PASSES_PER_BATCH * self.settings.forward_batch_size

    @property
    def max_length(self) -> int:
        """Tokens per record after truncation, special tokens included."""
        return self._tokenizer.max_length

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> Prepared:
        """Tokenize the batch; a record that is not text (or not UTF-8) fails alone."""
        values = inputs[TEXT_INPUT]
        texts: list[str] = []
        ok: list[int] = []
        failed: list[tuple[int, str]] = []
        for i, value in enumerate(values.reshape(-1)):
            text = _as_text(value)
            if isinstance(text, str):
                texts.append(text)
                ok.append(i)
            else:
                failed.append((i, text[0]))
        encodings = self._tokenizer.backend.encode_batch(texts) if texts else []
        ids = np.empty(len(encodings), dtype=object)
        for i, encoding in enumerate(encodings):
            ids[i] = np.asarray(encoding.ids, dtype=np.int64)
        counters = self._counters(ids, sum(1 for e in encodings if e.overflowing))
        return Prepared({"input_ids": ids}, np.asarray(ok, dtype=np.int64), failed, counters)

    def _counters(self, ids: np.ndarray, truncated: int) -> dict[str, int]:
        lengths = row_lengths(ids)
        rows = self.settings.forward_batch_size
        bucketed = padding_counts(lengths, forward_passes(lengths, rows, bucketing=self.settings.bucketing))
        in_order = padding_counts(lengths, forward_passes(lengths, rows, bucketing=False))
        return {
            "truncated_records": truncated,
            "tokens": bucketed.tokens,
            "padded_tokens": bucketed.padded_tokens,
            "padded_tokens_unbucketed": in_order.padded_tokens,
        }

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Forward passes of at most ``forward_batch_size`` records, each padded to its longest."""
        rows = inputs["input_ids"]
        lengths = row_lengths(rows)
        passes = forward_passes(lengths, self.settings.forward_batch_size, bucketing=self.settings.bucketing)
        results: dict[str, np.ndarray] = {}
        try:
            with torch.inference_mode():
                for index in passes:
                    for name, value in self._forward(list(rows[index])).items():
                        if name not in results:
                            results[name] = np.empty((len(rows), *value.shape[1:]), dtype=value.dtype)
                        results[name][index] = value
        except torch.OutOfMemoryError:
            raise  # as it is, so that the engines can tell it from a broken model and retry smaller
        except RuntimeError as exc:  # torch's other errors (shapes, devices) are RuntimeErrors
            raise PredictError(f"model {self.source.display_name} failed: {exc}") from exc
        if not results:
            results = {s.name: _empty(s) for s in self.signature.outputs}
        return self._head.finish(results)

    def _forward(self, rows: list[np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = pad_rows(rows, self._tokenizer.pad_id)
        input_ids = torch.from_numpy(ids).to(self.device)
        attention = torch.from_numpy(mask).to(self.device)
        output = self._module(input_ids=input_ids, attention_mask=attention)
        return {name: t.float().cpu().numpy() for name, t in self._head.compute(output, attention).items()}


def _empty(spec: TensorSpec) -> np.ndarray:
    return np.zeros((0, *(max(d, 1) for d in spec.shape[1:])), dtype=spec.dtype)


def _as_text(value: object) -> str | tuple[str]:
    """The record's text, or (the reason it is not text,)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | np.bytes_):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            return (f"text is not valid UTF-8: {exc.reason} at byte {exc.start}",)
    return (f"expected text, found {type(value).__name__}",)


def _module(auto: Any, directory: Path, source: ModelSource) -> Any:
    from transformers.utils import logging as typed_logging

    logging: Any = typed_logging  # its setters are untyped
    safetensors = check_weights(directory, source.options)
    # transformers' loading bars and load reports would land in the middle of a run's progress
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        module = auto.from_pretrained(str(directory), local_files_only=True, use_safetensors=safetensors)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"transformers cannot load the model in {directory}: {exc}") from exc
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    # torch has one intra-op pool per process, not one per model: the engines give every
    # worker its share of the cores, as ONNX Runtime's per-session setting does
    apply_threads(source.options)
    module = module.to(resolve_device(source.options))
    if source.options.precision != "fp32":  # fp32 leaves the weights as saved; the heads return float32
        module = module.to(dtype=compute_dtype(source.options))
    return module.eval()


def _embedding_head(settings: TextConfig, hidden: int) -> _Head:
    def compute(output: Any, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        states = output.last_hidden_state
        if settings.pooling == "cls":
            pooled = states[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if settings.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return {"embedding": pooled}

    return _Head((TensorSpec("embedding", np.dtype(np.float32), (-1, hidden)),), compute)


def _classification_head(id2label: Mapping[int, str], multi_label: bool) -> _Head:
    names = np.array([id2label[i] for i in range(len(id2label))], dtype=object)

    def compute(output: Any, _mask: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = output.logits.float()
        probabilities = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
        return {"probabilities": probabilities}

    def finish(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        probabilities = outputs["probabilities"].astype(np.float32, copy=False)
        best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)
        return {
            "label": names[best],
            "score": probabilities[np.arange(len(best)), best].astype(np.float32),
            "probabilities": probabilities,
        }

    outputs = (
        TensorSpec("label", np.dtype(object), (-1,)),
        TensorSpec("score", np.dtype(np.float32), (-1,)),
        TensorSpec("probabilities", np.dtype(np.float32), (-1, len(names))),
    )
    return _Head(outputs, compute, finish)


def load_feature_extractor(source: ModelSource, directory: Path, hf_config: dict[str, Any]) -> Model:
    """Task ``feature-extraction``: one ``embedding`` per record (mean or CLS pooling, optionally normalized)."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(directory, hf_config, source.config.text)
    module = _module(AutoModel, directory, source)
    hidden = int(getattr(module.config, "hidden_size", 0) or 0) or -1
    return HfTextModel(source, module, tokenizer, _embedding_head(source.config.text, hidden))


def load_text_classifier(source: ModelSource, directory: Path, hf_config: dict[str, Any]) -> Model:
    """Task ``text-classification``: ``label`` (config.json's id2label), ``score`` and ``probabilities``."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(directory, hf_config, source.config.text)
    module = _module(AutoModelForSequenceClassification, directory, source)
    id2label = {int(k): str(v) for k, v in module.config.id2label.items()}
    multi_label = getattr(module.config, "problem_type", None) == "multi_label_classification"
    return HfTextModel(source, module, tokenizer, _classification_head(id2label, multi_label))
