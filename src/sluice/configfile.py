"""Settings files: a YAML (or JSON) file read into a pydantic model, with errors that name file and field.

Every package that takes a settings file (model.yaml, job specs, training configs) reads it here,
so their error messages read the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sluice.errors import ConfigError

__all__ = ["format_validation_error", "read_yaml_model"]

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def read_yaml_model(path: Path, model: type[ConfigT]) -> ConfigT:
    """Read a YAML file (JSON is YAML) into a pydantic model, with errors that name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, found {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from exc


def format_validation_error(exc: ValidationError) -> str:
    """Every problem of ``exc`` as ``field.path: message``, joined by ``; `` (pydantic's prefixes dropped)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
