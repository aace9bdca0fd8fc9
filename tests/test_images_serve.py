"""Image models over the Open Inference Protocol: BYTES tensors of encoded images from tritonclient,
as binary data and as JSON (an image's base64 text). A bad image in a dynamically batched group
fails only its own request, with a 400 that gives the decoder's reason."""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from image_support import BAD, GOOD, ImageKit, expected, image_kit, object_array, read_bytes
from sluice.serve.server import ServerThread, ServeSettings

__all__ = ["image_kit"]


@pytest.fixture(scope="module")
def server(image_kit: ImageKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("image-repo")
    shutil.copytree(image_kit.model, root / "pets" / "1")
    # eight one-image requests close one batch long before the two-second window passes
    (root / "pets" / "model.yaml").write_text("batching: {max_batch_size: 8, max_queue_delay_us: 2000000}\n")
    settings = ServeSettings(repository=root, port=0, log_level="warning")
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=60)
        yield running


def _input(images: list[bytes], binary: bool, factory: type = httpclient.InferInput) -> httpclient.InferInput:
    values = images if binary else [base64.b64encode(data) for data in images]
    infer_input = factory("image", [len(images)], "BYTES")
    infer_input.set_data_from_numpy(object_array(values), binary_data=binary)
    return infer_input


@pytest.mark.parametrize("binary", [True, False])
def test_images_as_bytes_tensors(server: ServerThread, image_kit: ImageKit, binary: bool) -> None:
    images = read_bytes(image_kit.images, GOOD[:5])
    client = httpclient.InferenceServerClient(url=server.url)
    try:
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "score", "probabilities")]
        result = client.infer("pets", [_input(images, binary)], outputs=outputs)
    finally:
        client.close()
    want = expected(image_kit.model, images)
    # tritonclient gives BYTES outputs as bytes from binary data, as str from JSON
    assert [v.decode() if binary else v for v in result.as_numpy("label")] == want["label"].tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-4)
    np.testing.assert_allclose(result.as_numpy("score"), want["score"], atol=1e-4)
    assert result.as_numpy("probabilities").dtype == np.float32


def test_a_bad_image_fails_only_its_own_request(server: ServerThread, image_kit: ImageKit) -> None:
    names = [GOOD[0], GOOD[1], BAD[1], GOOD[2], GOOD[3], BAD[0], GOOD[4], GOOD[5]]
    images = read_bytes(image_kit.images, names)

    async def burst() -> list[np.ndarray | InferenceServerException]:
        client = aioclient.InferenceServerClient(url=server.url)

        async def one(data: bytes) -> np.ndarray | InferenceServerException:
            try:
                result = await client.infer("pets", [_input([data], True, aioclient.InferInput)])
            except InferenceServerException as exc:
                return exc
            return result.as_numpy("probabilities")

        try:
            return await asyncio.gather(*(one(data) for data in images))
        finally:
            await client.close()

    before = _batches(server)
    results = asyncio.run(burst())
    assert _batches(server) == (before[0] + 1, before[1] + 8)  # one batch of all eight requests
    for name, data, result in zip(names, images, results, strict=True):
        if name in BAD:
            assert isinstance(result, InferenceServerException)
            assert result.status() == "400"
            reason = {
                BAD[0]: "image file is truncated (0 bytes not processed)",
                BAD[1]: "cannot identify image file",
            }[name]
            assert (
                result.message() == f"model 'pets' cannot take row 0 of the request: cannot decode the image: {reason}"
            )
        else:
            assert isinstance(result, np.ndarray), result
            np.testing.assert_allclose(result, expected(image_kit.model, [data])["probabilities"], atol=1e-4)


def _batches(server: ServerThread) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    count = re.search(r'sluice_batch_size_count\{model="pets",version="1"\} (\d+)', text)
    total = re.search(r'sluice_batch_size_sum\{model="pets",version="1"\} (\d+)', text)
    return (int(count.group(1)), int(total.group(1))) if count and total else (0, 0)


def test_prepare_requests_sets_aside_only_the_requests_that_fail() -> None:
    from sluice.models.base import Prepared
    from sluice.serve.preparing import prepare_requests

    def prepare(inputs):  # doubles each value; a row b"bad" cannot be prepared
        values = inputs["x"]
        failed = [(i, "not a number") for i, v in enumerate(values) if v == b"bad"]
        ok = np.array([i for i in range(len(values)) if values[i] != b"bad"], dtype=np.int64)
        return Prepared({"y": np.array([2 * int(values[i]) for i in ok], dtype=np.int64)}, ok, failed)

    requests = [{"x": object_array([b"1", b"2"])}, {"x": object_array([b"3", b"bad"])}, {"x": object_array([b"4"])}]
    batch = prepare_requests(prepare, requests, "m")
    assert batch.live == (0, 2)
    assert batch.rows == 3
    assert batch.inputs["y"].tolist() == [2, 4, 8]
    assert list(batch.rejected) == [1]
    assert str(batch.rejected[1]) == "model 'm' cannot take row 1 of the request: not a number"
    assert batch.rejected[1].http_status == 400
    assert prepare_requests(prepare, [requests[1]], "m").live == ()
