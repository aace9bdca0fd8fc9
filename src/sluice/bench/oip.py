"""Building Open Inference Protocol requests for a served model, from its metadata."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from sluice.bench.loadgen import HttpRequest
from sluice.errors import ConfigError

__all__ = ["infer_request", "model_metadata"]

_NUMPY = {
    "BOOL": "bool", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}  # fmt: skip


def model_metadata(url: str, model: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``GET {url}/v2/models/{model}`` (only ever a local, user-given server)."""
    target = f"{url.rstrip('/')}/v2/models/{model}"
    if not target.startswith("http://"):
        raise ConfigError(f"server URL {url!r} must start with http://")
    req = urllib.request.Request(target, headers=headers or {})  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - scheme checked above
            data: dict[str, Any] = json.loads(response.read())
    except OSError as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # an error answer holds its connection open until closed
        raise ConfigError(f"cannot read the metadata of model '{model}' at {target}: {exc}") from None
    return data


def infer_request(
    url: str, model: str, metadata: dict[str, Any], *, rows: int = 1, binary: bool = False, seed: int = 0,
    headers: dict[str, str] | None = None,
) -> HttpRequest:  # fmt: skip
    """A ``POST …/infer`` with ``rows`` rows of random inputs shaped as the metadata says."""
    rng = np.random.default_rng(seed)
    specs, blobs = [], []
    for spec in metadata["inputs"]:
        datatype = spec["datatype"]
        if datatype not in _NUMPY:
            raise ConfigError(f"input '{spec['name']}' has datatype {datatype}, which the load generator cannot fill")
        shape = [rows if i == 0 and d < 0 else (1 if d < 0 else d) for i, d in enumerate(spec["shape"])]
        values = rng.normal(size=shape).astype(_NUMPY[datatype])
        entry: dict[str, Any] = {"name": spec["name"], "shape": shape, "datatype": datatype}
        if binary:
            blob = np.ascontiguousarray(values).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = values.reshape(-1).tolist()
        specs.append(entry)
    document: dict[str, Any] = {"inputs": specs}
    if binary:
        document["outputs"] = [{"name": o["name"], "parameters": {"binary_data": True}} for o in metadata["outputs"]]
    head = json.dumps(document, separators=(",", ":")).encode()
    extra = {"Content-Type": "application/octet-stream" if binary else "application/json", **(headers or {})}
    if binary:
        extra["Inference-Header-Content-Length"] = str(len(head))
    return HttpRequest.post(f"{url.rstrip('/')}/v2/models/{model}/infer", head + b"".join(blobs), extra)
