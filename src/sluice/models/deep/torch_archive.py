"""What kind of PyTorch file a path holds, told from its archive layout without unpickling it.

``torch.jit.save``, ``torch.export.save`` and ``torch.save`` all write zip archives under one
top-level folder, and each leaves its own marks: a TorchScript archive has ``code/`` (the
program as TorchScript source) and ``constants.pkl``; an export archive has an
``archive_format`` file reading ``pt2`` and ``models/*.json`` (the program as JSON); a
``torch.save`` archive has only ``data.pkl`` and its tensors, a pickle that may name any
Python object. ``torch.save`` with the legacy format writes a bare pickle stream.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path
from typing import Literal

import torch
from torch.export.pt2_archive.constants import OPAQUE_OBJ_FILENAME_PREFIX

from sluice.errors import ModelLoadError

__all__ = ["ArchiveKind", "archive_kind", "export_pickled_parts", "pickled_classes"]

ArchiveKind = Literal["torchscript", "export", "pickle"]
_PICKLE_PROTOCOL_2_OR_LATER = b"\x80"
# what a state dict's pickle names: its mapping type, tensor rebuilders and storage types
_STATE_DICT_MODULES = frozenset({"collections", "builtins", "torch", "torch._utils"})


def archive_kind(path: Path) -> ArchiveKind:
    """``torchscript``, ``export`` or ``pickle`` (a ``torch.save`` file); :class:`ModelLoadError` otherwise."""
    try:
        if not zipfile.is_zipfile(path):
            with path.open("rb") as fh:
                head = fh.read(1)
            if head == _PICKLE_PROTOCOL_2_OR_LATER:
                return "pickle"
            raise ModelLoadError(
                f"{path} is not a PyTorch program: expected a zip archive written by torch.jit.save or "
                "torch.export.save"
            )
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            return _kind_of(path, archive, names)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"cannot read PyTorch file {path}: {exc}") from exc


def _kind_of(path: Path, archive: zipfile.ZipFile, names: list[str]) -> ArchiveKind:
    inner = {name.partition("/")[2] for name in names}
    if "archive_format" in inner and any(n.startswith("models/") and n.endswith(".json") for n in inner):
        root = _root(names)
        if archive.read(f"{root}archive_format").strip() == b"pt2":
            return "export"
    if "constants.pkl" in inner and any(n.startswith("code/") for n in inner):
        return "torchscript"
    if "data.pkl" in inner:
        return "pickle"
    raise ModelLoadError(
        f"{path} is a zip archive but not one PyTorch writes: expected a TorchScript (torch.jit.save) or "
        "torch.export (torch.export.save) program"
    )


def _root(names: list[str]) -> str:
    head = names[0].partition("/")[0]
    return f"{head}/" if names[0].count("/") else ""


def export_pickled_parts(path: Path) -> list[str]:
    """The parts of an export archive that loading would fully unpickle (running any code they name).

    Plain tensors are stored raw; tensor subclasses and opaque constants are pickles, and the
    sample inputs are a ``torch.save`` pickle that torch.export.load unpickles in full when
    PyTorch's restricted loader refuses it.
    """
    pickled: list[str] = []
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root = _root(names)
        for name in names:
            inner = name[len(root) :]
            if inner.endswith("_config.json") and inner.startswith(("data/weights/", "data/constants/")):
                pickled += _pickled_payloads(inner, json.loads(archive.read(name)))
            elif inner.startswith("data/sample_inputs/") and not _loads_restricted(archive.read(name)):
                pickled.append(inner)
    return pickled


def _pickled_payloads(config_name: str, config: dict[str, dict[str, dict[str, object]]]) -> list[str]:
    folder = config_name.rpartition("/")[0]
    return [
        f"{folder}/{meta['path_name']}"
        for meta in config.get("config", {}).values()
        if meta.get("use_pickle") or str(meta.get("path_name", "")).startswith(OPAQUE_OBJ_FILENAME_PREFIX)
    ]


def _loads_restricted(content: bytes) -> bool:
    if not content:
        return True
    try:
        torch.load(io.BytesIO(content), weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal of the restricted loader means "a full pickle"
        return False
    return True


def pickled_classes(path: Path) -> list[str] | None:
    """The classes a ``torch.save`` zip archive's pickle names, beyond those of a state dict, read
    from its opcodes without running them; None for a legacy (non-zip) file.

    An empty list means a state dict (tensors in plain mappings); otherwise the first class is the
    pickled object's own, e.g. ``__main__.Net`` for a whole ``nn.Module``.
    """
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        data = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        content = archive.read(data)
    classes: list[str] = []
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(content):
        if isinstance(arg, str):
            strings.append(arg)
        if opcode.name == "GLOBAL" and isinstance(arg, str):
            module, _, name = arg.partition(" ")
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            module, name = strings[-2], strings[-1]
        else:
            continue
        if module not in _STATE_DICT_MODULES and f"{module}.{name}" not in classes:
            classes.append(f"{module}.{name}")
    return classes
