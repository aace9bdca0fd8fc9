"""Hugging Face model directories: detection, the file checks, the task, and the loader for it.

A directory holding ``config.json`` is a Hugging Face model, as ``--model DIR`` and as a
repository version directory. Nothing is ever downloaded: every file must be in the directory,
and a missing one is named. Weights are read from safetensors; ``pytorch_model.bin`` is a
pickle and needs ``trust_pickle``. The task (config.json's ``architectures``, else model.yaml's
``task:`` or ``--task``) picks the loader from :data:`TASKS`, a table of ``module:function``
names imported only when such a model is loaded.

This module imports neither torch nor transformers: the model loader and the repository use
it to recognise a directory without paying for them.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from sluice.errors import MissingDependency, ModelLoadError, ModelNotFound, UnsafeModelError
from sluice.models.base import Model, ModelSource
from sluice.models.config import LoadOptions, ModelConfig

__all__ = [
    "CONFIG_FILE",
    "TASKS",
    "check_weights",
    "hf_source",
    "is_hf_model_dir",
    "load_hf_model",
    "read_hf_config",
    "require_file",
    "task_of",
]

CONFIG_FILE = "config.json"
"""The file that makes a directory a Hugging Face model."""

TASKS: dict[str, str] = {
    "feature-extraction": "sluice.models.deep.hf_text:load_feature_extractor",
    "text-classification": "sluice.models.deep.hf_text:load_text_classifier",
    "image-classification": "sluice.models.deep.hf_image:load_image_classifier",
}
"""Each task Sluice runs, and the ``module:function`` that loads a model for it."""

_ENGINES = frozenset({"torch", "transformers", "tokenizers", "safetensors", "PIL"})
_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# architecture name endings -> task, checked in order (the longest, most specific first)
_ARCHITECTURE_TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForImageClassification", "image-classification"),
    ("Model", "feature-extraction"),
)


def is_hf_model_dir(path: Path) -> bool:
    """Whether ``path`` is a directory with a Hugging Face ``config.json`` in it."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def hf_source(
    directory: Path,
    config: ModelConfig | None,
    options: LoadOptions,
    name: str | None = None,
    version: int | None = None,
) -> ModelSource:
    """The source of the Hugging Face model in ``directory`` (checked when it is loaded)."""
    return ModelSource("hf", str(directory), config or ModelConfig(), options, name, version)


def require_file(directory: Path, name: str, what: str, hint: str = "") -> Path:
    """``directory / name``, or :class:`ModelNotFound` naming the missing file and what it is for."""
    path = directory / name
    if not path.is_file():
        raise ModelNotFound(
            f"Hugging Face model directory {directory} has no {name} ({what}); nothing is downloaded, "
            f"so every file must be in the directory{hint}"
        )
    return path


def read_hf_config(directory: Path) -> dict[str, Any]:
    """The directory's ``config.json`` as a dict; a missing or broken file names itself."""
    path = require_file(directory, CONFIG_FILE, "the model's configuration")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def check_weights(directory: Path, options: LoadOptions) -> bool:
    """Whether the weights are safetensors (True) or a trusted pickle (False); raises otherwise.

    A ``pytorch_model.bin`` is a pickle: loading one can run any code it carries, so it needs
    ``trust_pickle``, and safetensors beside it always win.
    """
    if any((directory / name).is_file() for name in _SAFETENSORS):
        return True
    pickled = next((name for name in _PICKLES if (directory / name).is_file()), None)
    if pickled is None:
        raise ModelNotFound(
            f"Hugging Face model directory {directory} has no weights file: expected {_SAFETENSORS[0]} "
            f"(or a sharded {_SAFETENSORS[1]}); save the model with save_pretrained(DIR)"
        )
    if not options.trust_pickle:
        raise UnsafeModelError(
            f"{directory / pickled} is a pickle (PyTorch's torch.save format), and loading a pickle can run "
            "whatever code it contains. Convert it to model.safetensors (load the model "
            "and save_pretrained(DIR) again), or, for a file you made or fully trust, pass `trust_pickle=True` "
            "(or opt the repository in with 'trust_pickle: true' in its sluice-repository.yaml)",
            params=("trust_pickle",),
        )
    return False


def task_of(hf_config: dict[str, Any], config: ModelConfig, directory: Path) -> str:
    """The task: model.yaml's ``task:`` (or ``--task``) when given, else what the architecture says."""
    task = config.task or _architecture_task(hf_config)
    if task is None:
        architectures = hf_config.get("architectures") or "none"
        raise ModelLoadError(
            f"cannot tell the task of the Hugging Face model in {directory} from its architectures "
            f"({architectures}); name it with `task` or 'task:' in model.yaml, one of {_known()}",
            params=("task",),
        )
    if task not in TASKS:
        raise ModelLoadError(
            f"unknown `task` {task!r} for {directory}: the known tasks are {_known()}", params=("task",)
        )
    return task


def _architecture_task(hf_config: dict[str, Any]) -> str | None:
    architectures = hf_config.get("architectures") or []
    for architecture in architectures if isinstance(architectures, list) else []:
        for ending, task in _ARCHITECTURE_TASKS:
            if isinstance(architecture, str) and architecture.endswith(ending):
                return task
    return None


def _known() -> str:
    return ", ".join(sorted(TASKS))


def load_hf_model(source: ModelSource) -> Model:
    """Load the Hugging Face model ``source`` names with the loader of its task."""
    directory = Path(source.location)
    if not directory.is_dir():
        raise ModelNotFound(f"Hugging Face model directory {directory} does not exist")
    hf_config = read_hf_config(directory)
    task = task_of(hf_config, source.config, directory)
    module_name, _, function = TASKS[task].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name in _ENGINES:
            raise MissingDependency(exc.name, "hf", f"Loading the Hugging Face model in {directory}") from exc
        raise ModelLoadError(f"task {task!r} needs module {module_name}, which cannot be imported: {exc}") from exc
    loader = getattr(module, function)
    model: Model = loader(source, directory, hf_config)
    return model
