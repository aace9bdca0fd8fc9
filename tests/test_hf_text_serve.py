"""``sluice serve`` with Hugging Face text models: BYTES in, FP32 embeddings and BYTES labels out,
through NVIDIA's tritonclient against the real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import re
import shutil
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("transformers")
httpclient = pytest.importorskip("tritonclient.http")
import tritonclient.http.aio as aioclient  # noqa: E402

from hf_text_support import (  # noqa: E402
    TextModels,
    direct_embeddings,
    direct_probabilities,
    documents,
    text_models,
)
from sluice.serve.server import ServerThread, ServeSettings  # noqa: E402

__all__ = ["text_models"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(text_models: TextModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("hf-serve")
    shutil.copytree(text_models.embedding, root / "embed" / "1")
    # a fixed window long enough that a burst of requests closes one full batch
    (root / "embed" / "model.yaml").write_text("batching: {max_batch_size: 12, max_queue_delay_us: 3000000}\n")
    shutil.copytree(text_models.classifier, root / "classify" / "1")
    settings = ServeSettings(repository=root, port=0, log_level="warning")
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=60)
        yield running


def _text_input(texts: list[str], binary: bool) -> object:
    values = np.array([t.encode() for t in texts], dtype=object)
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(values, binary_data=binary)
    return tensor


@pytest.mark.parametrize("binary", [False, True])
def test_embeddings_come_back_fp32(server: ServerThread, text_models: TextModels, binary: bool) -> None:
    texts = documents(5, seed=21)
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        outputs = [httpclient.InferRequestedOutput("embedding", binary_data=binary)]
        result = client.infer("embed", [_text_input(texts, binary)], outputs=outputs)
    finally:
        client.close()
    (output,) = result.get_response()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("embedding", "FP32", [5, 32])
    got = result.as_numpy("embedding")
    assert got.dtype == np.float32
    assert np.abs(got - direct_embeddings(text_models.embedding, texts)).max() <= 1e-4


@pytest.mark.parametrize("binary", [False, True])
def test_labels_come_back_as_bytes(server: ServerThread, text_models: TextModels, binary: bool) -> None:
    texts = documents(4, seed=22)
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "score", "probabilities")]
        result = client.infer("classify", [_text_input(texts, binary)], outputs=outputs)
    finally:
        client.close()
    datatypes = {o["name"]: o["datatype"] for o in result.get_response()["outputs"]}
    assert datatypes == {"label": "BYTES", "score": "FP32", "probabilities": "FP32"}
    expected = direct_probabilities(text_models.classifier, texts)
    names = np.array(["red", "green", "blue"], dtype=object)
    # tritonclient gives BYTES as bytes from binary outputs and as str from JSON ones
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
    assert labels == names[expected.argmax(axis=1)].tolist()
    assert np.abs(result.as_numpy("probabilities") - expected).max() <= 1e-4


async def _burst(server: ServerThread, texts: list[str]) -> list[np.ndarray]:
    """One request per text, all at once, through tritonclient's asyncio client."""
    client = aioclient.InferenceServerClient(url=server.url)
    try:

        async def one(text: str) -> np.ndarray:
            tensor = aioclient.InferInput("text", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
            return (await client.infer("embed", [tensor])).as_numpy("embedding")

        return await asyncio.gather(*(one(t) for t in texts))
    finally:
        await client.close()


def _batches(server: ServerThread) -> tuple[int, int]:
    """The embed model's batches so far, and the rows they held."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    count = re.search(r'sluice_batch_size_count\{model="embed",version="1"\} (\d+)', text)
    rows = re.search(r'sluice_batch_size_sum\{model="embed",version="1"\} (\d+)', text)
    return (int(count.group(1)), int(rows.group(1))) if count and rows else (0, 0)


def test_variable_length_requests_share_one_batch(server: ServerThread, text_models: TextModels) -> None:
    texts = [" ".join(["mi"] * n) for n in (1, 30, 3, 17, 8, 2, 25, 5, 12, 1, 40, 9)]
    batches, rows = _batches(server)
    results = asyncio.run(_burst(server, texts))
    got = np.concatenate(results)
    one_by_one = np.concatenate([direct_embeddings(text_models.embedding, [t]) for t in texts])
    assert np.abs(got - one_by_one).max() <= 1e-4
    assert _batches(server) == (batches + 1, rows + 12)  # all twelve lengths in one padded batch
