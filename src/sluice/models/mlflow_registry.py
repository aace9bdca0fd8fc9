"""MLflow model URIs: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``models:/NAME/latest``,
``runs:/RUN_ID/PATH``, reached with MLflow's own client.

The tracking server is the one MLflow itself would use (``MLFLOW_TRACKING_URI``, or the
``tracking_uri`` given). An alias (or ``latest``) is resolved to a version number first; a
version's files never change in MLflow, so each one is downloaded once into
``$SLUICE_CACHE_DIR/mlflow/`` (default ``~/.cache/sluice/mlflow``) and loaded from there, by
whichever flavor :func:`~sluice.models.mlflow_format.mlflow_source` picks.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from sluice.errors import ModelLoadError, ModelNotFound
from sluice.models.base import ModelSource
from sluice.models.config import LoadOptions, ModelConfig
from sluice.models.mlflow_format import MLMODEL, mlflow_source
from sluice.models.mlflow_pyfunc import mlflow_module

__all__ = ["MlflowReference", "MlflowRegistry", "is_mlflow_uri", "parse_mlflow_uri"]

_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+|latest)|@(?P<alias>[A-Za-z0-9_-]+))$")
_RUNS = re.compile(r"^runs:/(?P<run>[^/]+)/(?P<path>.+)$")
_FORMS = "models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest or runs:/RUN_ID/PATH"


def is_mlflow_uri(ref: str) -> bool:
    """Whether ``ref`` is an MLflow model URI (``models:/…`` or ``runs:/…``)."""
    return ref.startswith(("models:/", "runs:/"))


@dataclass(frozen=True)
class MlflowReference:
    """A parsed MLflow model URI."""

    uri: str
    kind: Literal["version", "alias", "latest", "run"]
    name: str  # the registered model, or the run id for kind 'run'
    selector: str  # the version number, the alias, 'latest', or the artifact path of a run


def parse_mlflow_uri(uri: str) -> MlflowReference:
    """Split an MLflow model URI; :class:`ModelNotFound` shows the accepted forms."""
    if match := _MODELS.match(uri):
        if match["alias"]:
            return MlflowReference(uri, "alias", match["name"], match["alias"])
        kind: Literal["version", "latest"] = "latest" if match["version"] == "latest" else "version"
        return MlflowReference(uri, kind, match["name"], match["version"])
    if match := _RUNS.match(uri):
        return MlflowReference(uri, "run", match["run"], match["path"].strip("/"))
    raise ModelNotFound(f"MLflow model URI {uri!r} is not one Sluice reads: use {_FORMS}")


class MlflowRegistry:
    """MLflow's tracking server and model registry, seen through ``mlflow.MlflowClient``."""

    def __init__(self, tracking_uri: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self._tracking_uri = tracking_uri
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._client: Any = None

    @property
    def tracking_uri(self) -> str:
        """The tracking server this registry talks to."""
        if self._tracking_uri is None:
            self._tracking_uri = str(mlflow_module("mlflow", "Reading an MLflow model").get_tracking_uri())
        return self._tracking_uri

    @property
    def client(self) -> Any:
        """The ``mlflow.MlflowClient`` (created on first use)."""
        if self._client is None:
            mlflow = mlflow_module("mlflow", "Reading an MLflow model")
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def version_of(self, ref: MlflowReference) -> int:
        """The version number ``ref`` names now (an alias or ``latest`` resolved in the registry)."""
        if ref.kind == "run":
            raise ModelNotFound(f"{ref.uri} names a run's files, not a registered model version")
        if ref.kind == "version":
            self._call(ref, self.client.get_model_version, ref.name, ref.selector)
            return int(ref.selector)
        if ref.kind == "alias":
            return int(self._call(ref, self.client.get_model_version_by_alias, ref.name, ref.selector).version)
        found = self._call(ref, self.client.search_model_versions, f"name = '{_quoted(ref.name)}'")
        if not found:
            raise ModelNotFound(f"{ref.uri}: registered model '{ref.name}' has no versions in {self.tracking_uri}")
        return max(int(v.version) for v in found)

    def download(self, ref: MlflowReference, version: int | None = None) -> Path:
        """The local MLflow model directory of ``ref`` (at ``version``), downloaded once."""
        if ref.kind == "run":
            target = self.cache_root / "runs" / quote(ref.name, safe="") / quote(ref.selector, safe="")
            artifact_uri = ref.uri
        else:
            version = self.version_of(ref) if version is None else version
            target = self.cache_root / "models" / quote(ref.name, safe="") / str(version)
            artifact_uri = f"models:/{ref.name}/{version}"
        if not (target / MLMODEL).is_file():
            self._fetch(ref, artifact_uri, target)
        return target

    def source(
        self,
        uri: str,
        config: ModelConfig | None = None,
        options: LoadOptions | None = None,
        *,
        version: int | None = None,
        name: str | None = None,
    ) -> ModelSource:
        """The loadable :class:`ModelSource` of an MLflow model URI (``version`` overrides what it names)."""
        ref = parse_mlflow_uri(uri)
        if ref.kind != "run" and version is None:
            version = self.version_of(ref)
        directory = self.download(ref, version)
        return mlflow_source(directory, config, options, name or (None if ref.kind == "run" else ref.name), version)

    @property
    def cache_root(self) -> Path:
        """Where this tracking server's models are downloaded to."""
        root = self._cache_dir or Path(
            os.environ.get("SLUICE_CACHE_DIR")
            or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sluice")
        )
        return root / "mlflow" / hashlib.sha256(self.tracking_uri.encode()).hexdigest()[:12]

    def _fetch(self, ref: MlflowReference, artifact_uri: str, target: Path) -> None:
        artifacts = mlflow_module("mlflow.artifacts", f"Downloading {ref.uri}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            local = Path(
                self._call(
                    ref,
                    artifacts.download_artifacts,
                    artifact_uri=artifact_uri,
                    dst_path=str(staging),
                    tracking_uri=self.tracking_uri,
                )
            )
            if not (local / MLMODEL).is_file():
                raise ModelNotFound(f"{ref.uri} holds no {MLMODEL} file: it is not an MLflow model")
            try:
                local.rename(target)  # the directory appears whole, or not at all
            except OSError:
                if not (target / MLMODEL).is_file():  # not another process that got there first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _call(self, ref: MlflowReference, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Call MLflow, translating its errors into Sluice's at this edge."""
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            code = str(getattr(exc, "error_code", ""))
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise ModelNotFound(f"{ref.uri} is not in the MLflow registry at {self.tracking_uri}: {first}") from exc
            raise ModelLoadError(f"MLflow at {self.tracking_uri} failed on {ref.uri}: {first}") from exc


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")
