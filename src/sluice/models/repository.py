"""The model repository: ``<root>/<name>/<version>/<artifact>`` plus ``<root>/<name>/model.yaml``."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from sluice.configfile import read_yaml_model
from sluice.errors import ConfigError, ModelNotFound, UnsafeModelError
from sluice.models.base import ModelSource
from sluice.models.config import LoadOptions, ModelConfig, ModelFormat
from sluice.models.mlflow_format import is_mlflow_model_dir, mlflow_source
from sluice.models.mlflow_registry import MlflowRegistry, parse_mlflow_uri

__all__ = [
    "DEFAULT_REPOSITORY",
    "MODEL_EXTENSIONS",
    "REPOSITORY_SETTINGS",
    "ModelRepository",
    "RepositorySettings",
    "detect_format",
    "format_for_path",
    "is_callable_reference",
    "parse_reference",
    "write_config",
]

DEFAULT_REPOSITORY = "models"
REPOSITORY_SETTINGS = "sluice-repository.yaml"
"""Repository-wide settings at the repository root (see :class:`RepositorySettings`)."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_EXTENSIONS: dict[str, ModelFormat] = {
    ".onnx": "onnx",
    ".skops": "sklearn",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".joblib": "pickle",
    ".ubj": "xgboost",
}
# Extensions that other files share too: such a file is a model only when its content says so.
_SNIFFED = {".json": "an XGBoost JSON model", ".txt": "a LightGBM text model"}
MODEL_EXTENSIONS = frozenset([*_EXTENSIONS, *_SNIFFED])
"""Every extension a model file may have (some need a look at the content too)."""


def detect_format(path: Path) -> ModelFormat | None:
    """The format of the model file at ``path``, or ``None`` when it is not one Sluice knows."""
    suffix = path.suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix not in _SNIFFED:
        return None
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if suffix == ".json" and b'"learner"' in head:
        return "xgboost"
    lines = head.splitlines()
    if suffix == ".txt" and lines[:1] == [b"tree"] and any(line.startswith(b"version=v") for line in lines[1:8]):
        return "lightgbm"
    return None


def format_for_path(path: Path) -> ModelFormat:
    """The format of the model file at ``path``; :class:`ModelNotFound` when it has none Sluice knows."""
    fmt = detect_format(path)
    if fmt is not None:
        return fmt
    suffix = path.suffix.lower()
    if suffix in _SNIFFED:
        raise ModelNotFound(
            f"cannot tell the format of model file {path}: a {suffix} model file must be {_SNIFFED[suffix]}; "
            "set 'format' in model.yaml if it is one"
        )
    known = ", ".join(sorted(MODEL_EXTENSIONS))
    raise ModelNotFound(f"cannot tell the format of model file {path}: expected one of {known}")


def parse_reference(ref: str) -> tuple[str, str | None]:
    """Split ``NAME[@VERSION|@LABEL]``; rejects names that could escape the repository root."""
    name, _, selector = ref.partition("@")
    if not _NAME.match(name) or ".." in name:
        raise ModelNotFound(
            f"model reference {ref!r} is not a valid name: use letters, digits, '.', '_' or '-' "
            "(optionally @VERSION or @LABEL), or give a path to a model file"
        )
    if "@" in ref and not _NAME.match(selector):
        raise ModelNotFound(f"model reference {ref!r}: '@' must be followed by a version number or a label")
    return name, selector or None


class RepositorySettings(BaseModel):
    """``<root>/sluice-repository.yaml``: what the repository's owner allows for every model in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trust_pickle: bool = Field(
        default=False,
        description="Load pickle/joblib artifacts of this repository (they can run any code): opt in only "
        "for a repository whose every file you made or fully trust.",
    )


class ModelRepository:
    """A directory of named, versioned models."""

    def __init__(self, root: str | os.PathLike[str], *, registry: MlflowRegistry | None = None) -> None:
        self.root = Path(root)
        self._registry = registry
        self._source_versions: dict[str, int] = {}  # the version each registry model's source named last

    @property
    def registry(self) -> MlflowRegistry:
        """The MLflow registry that ``source:`` models come from (MLflow's own settings)."""
        if self._registry is None:
            self._registry = MlflowRegistry()
        return self._registry

    @property
    def settings_path(self) -> Path:
        return self.root / REPOSITORY_SETTINGS

    def settings(self) -> RepositorySettings:
        """The repository-wide settings (defaults when the file is absent)."""
        if not self.settings_path.is_file():
            return RepositorySettings()
        return read_yaml_model(self.settings_path, RepositorySettings)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def model_dir(self, name: str) -> Path:
        parse_reference(name)
        root = self.root.resolve()
        path = (root / name).resolve()
        if path.parent != root:
            raise ModelNotFound(f"model name {name!r} resolves outside the repository {self.root}")
        return path

    def config(self, name: str) -> ModelConfig:
        path = self.model_dir(name) / "model.yaml"
        if not path.is_file():
            return ModelConfig()
        return read_yaml_model(path, ModelConfig)

    def versions(self, name: str) -> list[int]:
        """The version numbers of ``name``; for a registry model, the one its ``source`` named last."""
        directory = self.model_dir(name)
        if not directory.is_dir():
            return []
        found = sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
        if found or not (directory / "model.yaml").is_file():
            return found
        try:
            config = self.config(name)
        except ConfigError:  # resolve() reports it; a listing shows the model without versions
            return []
        if not config.source:
            return []
        known = self._source_versions.get(name)
        return [known if known is not None else self._refreshed(name, config.source)]

    def refresh_source(self, name: str, config: ModelConfig | None = None) -> int | None:
        """Ask the registry which version ``name``'s ``source`` names now (None: not a registry model).

        :meth:`versions` answers from the last refresh, so a server asks the registry once per poll.
        """
        config = config or self.config(name)
        return self._refreshed(name, config.source) if config.source else None

    def _refreshed(self, name: str, uri: str) -> int:
        version = self.registry.version_of(parse_mlflow_uri(uri))
        self._source_versions[name] = version
        return version

    def resolve(self, ref: str, options: LoadOptions | None = None) -> ModelSource:
        """Turn ``NAME``, ``NAME@VERSION`` or ``NAME@LABEL`` into a loadable :class:`ModelSource`."""
        name, selector = parse_reference(ref)
        directory = self.model_dir(name)
        if not directory.is_dir():
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"no model named '{name}' in repository {self.root} (models there: {known})")
        config = self.config(name)
        options = options or LoadOptions()
        if not options.trust_pickle and self.settings().trust_pickle:
            options = options.model_copy(update={"trust_pickle": True})
        if config.source:
            return self._registry_source(name, selector, config, config.source, options)
        version = self._select(name, selector, config)
        source = _source_in(directory / str(version), config, options, name, version)
        if source.format == "pickle" and not options.trust_pickle:
            raise UnsafeModelError(
                f"model '{name}' version {version}: {source.location} is a pickle/joblib file, and loading one "
                "runs whatever code it contains. Save it with skops instead, pass `trust_pickle=True`, or opt this "
                f"repository in with 'trust_pickle: true' in {self.settings_path}",
                params=("trust_pickle",),
            )
        return source

    def _registry_source(
        self, name: str, selector: str | None, config: ModelConfig, uri: str, opts: LoadOptions
    ) -> ModelSource:
        """``name``'s version from the registry: its source's, a number, a label, or another alias."""
        ref = parse_mlflow_uri(uri)
        if selector is None:
            version = self._refreshed(name, uri)
        elif selector.isdigit():
            version = int(selector)
        elif selector in config.labels:
            version = config.labels[selector]
        else:  # 'latest' or an alias of the registered model
            other = f"models:/{ref.name}/latest" if selector == "latest" else f"models:/{ref.name}@{selector}"
            version = self.registry.version_of(parse_mlflow_uri(other))
        return self.registry.source(uri, config, opts, version=version, name=name)

    def _select(self, name: str, selector: str | None, config: ModelConfig) -> int:
        versions = self.versions(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' in {self.root} has no version directories (1/, 2/, …)")
        if selector is None:
            return config.labels.get("stable", versions[-1])
        if selector.isdigit():
            if int(selector) not in versions:
                raise ModelNotFound(f"model '{name}' has no version {selector}; versions: {versions}")
            return int(selector)
        if selector == "latest":
            return versions[-1]
        if selector not in config.labels:
            raise ModelNotFound(f"model '{name}' has no label '{selector}'; labels: {sorted(config.labels) or 'none'}")
        version = config.labels[selector]
        if version not in versions:
            raise ModelNotFound(f"label '{selector}' of model '{name}' points to missing version {version}")
        return version

    def publish(self, name: str, artifact: Path, config: ModelConfig | None = None) -> int:
        """Copy ``artifact`` in as the next version of ``name``; the version appears atomically.

        The version directory and its files get the umask's permissions (as ``mkdir`` and
        ``cp`` would give them), so a server running as another user can read them.
        """
        directory = self.model_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        if config is not None:
            write_config(directory / "model.yaml", config)
        versions = self.versions(name)
        version = (versions[-1] + 1) if versions else 1
        staging = directory / f".{version}-{uuid.uuid4().hex[:12]}"
        staging.mkdir()  # not mkdtemp: its 0700 would hide the version from other users
        try:
            shutil.copyfile(artifact, staging / artifact.name)  # a new file: the umask's mode, not the source's
            staging.rename(directory / str(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version


def write_config(path: Path, config: ModelConfig) -> None:
    """Write ``config`` to ``path`` atomically: a reader sees the old file or the new one, never half."""
    data = config.model_dump(mode="json", exclude_defaults=True)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # not mkstemp: its 0600 would hide model.yaml from a server running as another user
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(yaml.safe_dump(data, sort_keys=False))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _source_in(version_dir: Path, config: ModelConfig, options: LoadOptions, name: str, version: int) -> ModelSource:
    if config.format == "python" or config.callable:
        if not config.callable:
            raise ConfigError(f"model '{name}': format 'python' needs 'callable: module:function' in model.yaml")
        return ModelSource("python", config.callable, config, options, name, version, str(version_dir))
    if not config.artifact and is_mlflow_model_dir(version_dir):
        return mlflow_source(version_dir, config, options, name, version)
    if not config.artifact and (version_dir / "config.json").is_file():
        return ModelSource("hf", str(version_dir), config, options, name, version)
    if config.artifact:
        artifact = version_dir / config.artifact
        if not artifact.is_file():
            raise ModelNotFound(f"model '{name}' version {version}: artifact {artifact} does not exist")
    else:
        candidates = sorted(p for p in version_dir.iterdir() if p.is_file() and detect_format(p) is not None)
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "no model file"
            raise ModelNotFound(
                f"model '{name}' version {version}: expected one model file in {version_dir}, "
                f"found {found}; set 'artifact' in model.yaml"
            )
        artifact = candidates[0]
    fmt = config.format or format_for_path(artifact)
    return ModelSource(fmt, str(artifact), config, options, name, version)


def is_callable_reference(ref: str) -> bool:
    return bool(_CALLABLE.match(ref)) and not Path(ref).exists()
