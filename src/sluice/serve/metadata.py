"""Open Inference Protocol metadata: server and model metadata, and Triton's model configuration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sluice.errors import ConfigError
from sluice.models.policy_config import LatestVersions, VersionPolicy
from sluice.models.signature import Signature, TensorSpec
from sluice.serve.tensors import config_datatype, datatype_of

__all__ = ["model_config", "model_metadata", "server_metadata", "version_policy"]


def server_metadata(extensions: Sequence[str], *, name: str = "sluice", version: str | None = None) -> dict[str, Any]:
    """The document of ``GET /v2``: server name, version and protocol extensions."""
    if version is None:
        from sluice._version import __version__ as version
    return {"name": name, "version": version, "extensions": list(extensions)}


def model_metadata(
    name: str, versions: Sequence[str | int], signature: Signature, platform: str = "onnxruntime_onnx"
) -> dict[str, Any]:
    """The document of ``GET /v2/models/{name}[/versions/{v}]``; shapes include the batch dimension."""
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": platform,
        "inputs": [_tensor_metadata(s) for s in signature.inputs],
        "outputs": [_tensor_metadata(s) for s in signature.outputs],
    }


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": list(spec.shape)}


def model_config(
    name: str,
    signature: Signature,
    max_batch_size: int,
    *,
    platform: str = "onnxruntime_onnx",
    backend: str = "onnxruntime",
) -> dict[str, Any]:
    """Triton's model configuration (``GET /v2/models/{name}/config``) as JSON.

    With ``max_batch_size`` > 0 the ``dims`` leave out the batch dimension, which every tensor
    must then have as a dynamic first dimension; a 1-D tensor becomes dims ``[1]`` reshaped to
    ``[]``, as Triton writes it.
    """
    batched = max_batch_size > 0
    specs = [*signature.inputs, *signature.outputs]
    fixed = [s.name for s in specs if batched and (not s.shape or s.shape[0] >= 0)]
    if fixed:
        raise ConfigError(
            f"max_batch_size {max_batch_size} needs a dynamic first (batch) dimension on every tensor; "
            f"{', '.join(fixed)} have none; set max_batch_size to 0"
        )
    return {
        "name": name,
        "platform": platform,
        "backend": backend,
        "max_batch_size": max_batch_size,
        "input": [{**_tensor_config(s, batched), "format": "FORMAT_NONE"} for s in signature.inputs],
        "output": [_tensor_config(s, batched) for s in signature.outputs],
    }


def _tensor_config(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": spec.name, "data_type": config_datatype(datatype_of(spec.dtype))}
    dims = list(spec.shape[1:] if batched else spec.shape)
    if not dims:
        entry["dims"] = [1]
        entry["reshape"] = {"shape": []}
    else:
        entry["dims"] = dims
    return entry


def version_policy(policy: VersionPolicy) -> dict[str, Any]:
    """Triton's ``version_policy`` document for a ``versions:`` setting of model.yaml."""
    if policy == "all":
        return {"all": {}}
    if isinstance(policy, LatestVersions):
        return {"latest": {"num_versions": policy.latest}}
    return {"specific": {"versions": [str(v) for v in policy.specific]}}
