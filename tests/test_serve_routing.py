"""End to end: routing, sticky keys, shadows, feedback, live route changes and the guardrail on the
real server on 127.0.0.1, with real Python model versions (each version its own module file)."""

from __future__ import annotations

import http.client
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from sluice.errors import RemoteError
from sluice.models.repository import ModelRepository
from sluice.serve.abtest import two_proportion_ztest
from sluice.serve.control import ControlClient
from sluice.serve.routing import OutcomeTally, RouteTable
from sluice.serve.server import ServerThread, ServeSettings
from support import invoke

TOKEN = "routing-token"

HEALTHY = """\
import numpy as np

def predict(x):
    return {"label": (x[:, 0] > 0).astype(np.int64)}
"""

# the shadow disagrees with the primary on every row, waits at a gate the test opens, and raises
# on a first feature below -50; warm-up sends zeros, which pass at once
GATED_SHADOW = """\
import time
from pathlib import Path
import numpy as np

def predict(x):
    if x.any():
        gate = Path(__file__).with_name("open")
        deadline = time.monotonic() + 30
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        if x[0, 0] < -50:
            raise RuntimeError("the shadow broke")
    return {"label": (x[:, 0] <= 0).astype(np.int64)}
"""

BROKEN = """\
import numpy as np

def predict(x):
    if x.any():
        raise RuntimeError("this canary is broken")
    return {"label": np.zeros(len(x), dtype=np.int64)}
"""

# client and server share one process and two cores here: a generous latency target, so the
# batcher never sheds and every status counted is about routing
PYTHON_MODEL = {"callable": "version_code:predict", "concurrency": "threads", "batching": {"target_p99_ms": 5000}}
PYTHON_MODEL["outputs"] = [{"name": "label", "dtype": "int64", "shape": [-1]}]


def _model(root: Path, name: str, code: dict[int, str], **config: object) -> None:
    for version, source in code.items():
        (root / name / str(version)).mkdir(parents=True)
        (root / name / str(version) / "version_code.py").write_text(source)
    (root / name / "model.yaml").write_text(yaml.safe_dump({**PYTHON_MODEL, **config}, sort_keys=False))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("routing-repo")
    ab_routing = {"weights": {"stable": 90, "canary": 10}, "sticky_key": "parameters.routing_key"}
    _model(root, "ab", {1: HEALTHY, 2: HEALTHY, 3: GATED_SHADOW}, labels={"stable": 1, "canary": 2}, routing=ab_routing)
    guard = {"max_error_rate_increase": 0.05, "window_s": 600, "min_requests": 20}
    _model(root, "broken", {1: HEALTHY, 2: BROKEN}, routing={"weights": {1: 50, 2: 50}, "guardrail": guard})
    _model(root, "calm", {1: HEALTHY, 2: HEALTHY}, routing={"weights": {1: 50, 2: 50}, "guardrail": guard})
    _model(root, "pol", {1: HEALTHY, 2: HEALTHY, 3: HEALTHY}, versions={"latest": 2})
    bandit = {"weights": {1: 50, 2: 50}, "mode": "thompson", "floor_weight": 0.05, "sticky_key": "header:X-User"}
    _model(root, "bandit", {1: HEALTHY, 2: HEALTHY}, routing=bandit)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerThread]:
    settings = ServeSettings(repository=repository, port=0, auth_token=TOKEN, log_level="warning")
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=30)
        yield running


@pytest.fixture(scope="module")
def control(server: ServerThread) -> ControlClient:
    return ControlClient(f"http://{server.url}", token=TOKEN)


def _body(x: np.ndarray, request_id: str | None = None, key: str | None = None) -> bytes:
    document: dict[str, object] = {
        "inputs": [{"name": "input", "datatype": "FP64", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    if request_id is not None:
        document["id"] = request_id
    if key is not None:
        document["parameters"] = {"routing_key": key}
    return json.dumps(document).encode()


class Caller:
    """One keep-alive connection to the server."""

    def __init__(self, server: ServerThread) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def request(self, method: str, path: str, body: bytes = b"", auth: bool = True) -> tuple[int, dict, dict]:
        headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read() or b"{}")

    def infer(self, model: str, x: np.ndarray, **kwargs: str | None) -> tuple[int, dict, dict]:
        return self.request("POST", f"/v2/models/{model}/infer", _body(x, **kwargs))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def caller(server: ServerThread) -> Iterator[Caller]:
    c = Caller(server)
    yield c
    c.close()


X = np.array([[1.0, 0.5, 0.0, 2.0], [-1.0, 0.5, 0.0, 2.0]])
LABELS = [1, 0]


def _wait(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- routing -----------------------------------------------------------------------------------


def test_weighted_split_answers_with_the_version_in_body_and_header(caller: Caller, control: ControlClient) -> None:
    control.set_routes("ab", weights={"stable": 90, "canary": 10}, shadow={})
    versions = Counter()
    for _ in range(400):
        status, headers, body = caller.infer("ab", X)
        assert status == 200 and headers["sluice-model-version"] == body["model_version"]
        assert body["outputs"][0]["data"] == LABELS
        versions[body["model_version"]] += 1
    # the server's draws are not seeded: 4 standard deviations fail a correct split once in ~16,000 runs
    assert set(versions) == {"1", "2"} and abs(versions["2"] - 40) < 4 * math.sqrt(400 * 0.9 * 0.1)
    # a version or label in the URL bypasses routing
    for selector, version in (("2", "2"), ("canary", "2"), ("stable", "1"), ("3", "3")):
        # zeros: version 3 (the gated shadow of a later test) answers those at once
        status, headers, body = caller.request("POST", f"/v2/models/ab/versions/{selector}/infer", _body(0 * X))
        assert (status, headers["sluice-model-version"], body["model_version"]) == (200, version, version)


def test_sticky_keys_reach_the_same_variant_while_the_weights_stand(caller: Caller, control: ControlClient) -> None:
    control.set_routes("ab", weights={"stable": 90, "canary": 10}, shadow={})
    table = RouteTable({"stable": 90, "canary": 10})
    expected = {"stable": "1", "canary": "2"}
    rng = np.random.default_rng(0)
    for i in range(150):
        key = f"user-{i}"
        answers = {caller.infer("ab", X, key=key)[2]["model_version"] for _ in range(2)}
        assert answers == {expected[table.choose(key, rng)]}


def test_shadow_never_delays_or_changes_the_callers_answer(
    caller: Caller, control: ControlClient, repository: Path
) -> None:
    gate = repository / "ab" / "3" / "open"
    # copies from earlier tests must be done first, or one could finish behind the closed gate
    _wait(lambda: control.experiment("ab")["shadow_in_flight"] == 0, "earlier shadow copies")
    gate.unlink(missing_ok=True)
    control.set_routes("ab", weights={"stable": 100}, shadow={"3": 1.0})
    before = control.experiment("ab")["shadows"].get("3", {"copies": 0, "dropped": 0, "errors": 0})
    for i in range(20):  # every one answered while the shadow copies wait at the gate
        status, _, body = caller.infer("ab", X, request_id=f"shadowed-{i}")
        assert (status, body["model_version"], body["outputs"][0]["data"]) == (200, "1", LABELS)
    blocked = control.experiment("ab")
    # copies wait at the gate (at most max_shadow_in_flight of them; the rest are dropped, not queued)
    assert 1 <= blocked["shadow_in_flight"] <= 8 and blocked["shadows"]["3"]["copies"] == before["copies"]
    gate.touch()
    _wait(lambda: control.experiment("ab")["shadow_in_flight"] == 0, "the shadow copies")
    after = control.experiment("ab")["shadows"]["3"]
    assert sum(after[k] - before[k] for k in ("copies", "dropped", "errors")) == 20
    assert after["errors"] == before["errors"] and after["copies"] > before["copies"]
    status, _, body = caller.infer("ab", np.array([[-99.0, 0, 0, 0]]))  # the shadow raises on this one
    assert (status, body["outputs"][0]["data"]) == (200, [0])
    _wait(lambda: control.experiment("ab")["shadows"]["3"]["errors"] == before["errors"] + 1, "the failed shadow")
    assert control.experiment("ab")["shadows"]["3"]["agreement"] == 0.0  # it disagrees on every row


def test_feedback_attributes_outcomes_and_the_report_tests_them(
    caller: Caller, control: ControlClient, server: ServerThread
) -> None:
    control.set_routes("ab", weights={"stable": 50, "canary": 50}, shadow={})
    served = {}
    for i in range(120):
        served[f"fb-{i}"] = caller.infer("ab", X[:1], request_id=f"fb-{i}")[2]["model_version"]
    rewards = {"1": [1, 0, 0, 0], "2": [1, 1, 0, 0]}
    for i, (request_id, version) in enumerate(served.items()):
        reward = rewards[version][i % 4]
        status, _, answer = caller.request(
            "POST", "/v2/models/ab/feedback", json.dumps({"id": request_id, "reward": reward}).encode()
        )
        assert (status, answer["model_version"], answer["outcome"]) == (200, version, reward)
    # by the true label: one-row answers remember their class (1 here), so label 1 is a success
    status, _, answer = caller.request(
        "POST", "/v2/models/ab/feedback", json.dumps({"id": "fb-0", "label": 1}).encode()
    )
    assert (status, answer["outcome"]) == (200, 1.0)
    half = json.dumps({"id": "fb-0", "reward": 0.5}).encode()
    status, _, answer = caller.request("POST", "/v2/models/ab/feedback", half)
    assert (status, answer["error"]) == (
        400,
        "model 'ab' takes binary outcomes: 'reward' must be 0 or 1, got 0.5 "
        "(set routing.experiment.outcome: continuous in model.yaml for other numbers)",
    )
    status, _, answer = caller.request(
        "POST", "/v2/models/ab/feedback", json.dumps({"id": "nope", "reward": 1}).encode()
    )
    assert (status, answer) == (404, {"error": "model 'ab' has no remembered answer for request id 'nope'"})
    doc = control.experiment("ab")
    result = invoke("ab", "report", "ab", "--url", server.url, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [v["variant"] for v in report["variants"]] == ["stable", "canary"]
    outcomes = {
        v: OutcomeTally(
            **{
                k: doc["versions"][v]["outcomes"][s]
                for k, s in (("count", "count"), ("total", "sum"), ("total_sq", "sum_sq"))
            }
        )
        for v in ("1", "2")
    }
    expected = two_proportion_ztest(outcomes["1"], outcomes["2"])
    assert report["variants"][1]["comparison"]["statistic"] == pytest.approx(expected.statistic, rel=1e-12)
    assert report["variants"][1]["comparison"]["test"] == "two-proportion z-test"
    assert report["recommendation"] in ("promote canary", "keep collecting", "roll back canary")
    table = invoke("ab", "report", "ab", "--url", server.url)
    assert table.exit_code == 0 and "recommendation:" in table.stdout and "two-proportion z-test" in table.stdout


def test_metrics_per_variant(caller: Caller, server: ServerThread) -> None:
    caller.infer("ab", X)
    status, text = _text(server, "/metrics")
    assert status == 200
    assert 'sluice_route_weight{model="ab",version="stable"}' in text
    assert 'sluice_variant_requests_total{model="ab",version="1"}' in text
    assert 'sluice_variant_predictions_total{model="ab",version="1",class="1"}' in text
    assert 'sluice_shadow_copies_total{model="ab",version="3"}' in text
    assert 'sluice_variant_seconds_count{model="ab",version="1"}' in text


def _text(server: ServerThread, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_thompson_mode_moves_weight_to_the_better_variant(caller: Caller, control: ControlClient) -> None:
    served = {}
    for i in range(200):
        status, headers, _ = caller.request("POST", "/v2/models/bandit/infer", _body(X, request_id=f"b{i}"))
        assert status == 200
        served[f"b{i}"] = headers["sluice-model-version"]
    assert set(served.values()) == {"1", "2"}
    for request_id, version in served.items():  # version 2 always succeeds, version 1 never
        feedback = json.dumps({"id": request_id, "reward": 1 if version == "2" else 0}).encode()
        assert caller.request("POST", "/v2/models/bandit/feedback", feedback)[0] == 200
    live = control.routes("bandit")["live_weights"]
    assert live == {"1": pytest.approx(0.05), "2": pytest.approx(0.95)}
    assert control.routes("bandit")["routing"]["weights"] == {"1": 50, "2": 50}  # model.yaml keeps its own


def test_sticky_key_from_a_header(server: ServerThread) -> None:
    for user in ("ann", "bob", "cyd", "dan"):
        seen = set()
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request(
                "POST", "/v2/models/bandit/infer", _body(X), {"Authorization": f"Bearer {TOKEN}", "X-User": user}
            )
            response = conn.getresponse()
            response.read()
            seen.add(response.getheader("Sluice-Model-Version"))
            conn.close()
        assert len(seen) == 1


# -- changing routes live ----------------------------------------------------------------------


def test_live_weight_changes_under_concurrent_load_fail_no_request(
    server: ServerThread, control: ControlClient, repository: Path
) -> None:
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        c = Caller(server)
        try:
            while not stop.is_set():
                status, _, body = c.infer("ab", X)
                with lock:
                    statuses[status] += 1
                    versions[body.get("model_version", body.get("error", "?"))] += 1
        finally:
            c.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for weights in (
            {"stable": 10, "canary": 90},
            {"1": 50, "2": 50},
            {"canary": 100},
            {"1": 70, "2": 30},
            {"stable": 100},
        ):
            before = sum(statuses.values())
            control.set_routes("ab", weights=weights, shadow={})
            _wait(lambda b=before: sum(statuses.values()) > b + 20, "requests after the change")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert set(statuses) == {200} and sum(statuses.values()) > 80, versions
    assert set(versions) == {"1", "2"}
    assert ModelRepository(repository).config("ab").routing.weights == {"stable": 100}


def test_routes_cli_needs_the_token_and_persists_to_model_yaml(server: ServerThread, repository: Path) -> None:
    refused = invoke("routes", "set", "ab", "--weights", "1=80,2=20", "--url", server.url)
    assert refused.exit_code == 2  # a refused request (4xx) is a usage error, as everywhere
    assert refused.stderr.strip() == (
        f"error: POST http://{server.url}/v2/models/ab/routes answered 401: "
        "missing bearer token: send 'Authorization: Bearer <token>'"
    )
    done = invoke(
        "routes", "set", "ab", "--weights", "1=80,2=20", "--shadow", "3=0.2", "--url", server.url, "--auth-token", TOKEN
    )
    assert done.exit_code == 0, done.output
    config = ModelRepository(repository).config("ab")
    assert (config.routing.weights, config.routing.shadow) == ({"1": 80, "2": 20}, {"3": 0.2})
    assert not list((repository / "ab").glob(".model.yaml.*"))  # the temporary file was renamed into place
    shown = invoke("routes", "show", "ab", "--url", server.url, "--json")
    assert json.loads(shown.stdout)["live_weights"] == {"1": 80, "2": 20}
    bad = invoke("routes", "set", "ab", "--weights", "1=80,9=20", "--url", server.url, "--auth-token", TOKEN)
    assert bad.stderr.strip().endswith("answered 400: model 'ab' has no version 9; versions: [1, 2, 3]")
    promoted = invoke("routes", "promote", "ab", "2", "--url", server.url, "--auth-token", TOKEN, "--json")
    assert promoted.exit_code == 0, promoted.output
    config = ModelRepository(repository).config("ab")
    assert (config.labels, config.routing.weights) == ({"stable": 2, "canary": 2, "previous": 1}, {"stable": 100})
    assert ControlClient(server.url).routes("ab")["live_weights"] == {"stable": 100}
    rolled = invoke("routes", "rollback", "ab", "--url", server.url, "--auth-token", TOKEN)
    assert rolled.exit_code == 0, rolled.output  # no canary takes traffic: the previous stable returns
    assert ModelRepository(repository).config("ab").labels == {"stable": 1, "canary": 2}
    again = invoke("routes", "rollback", "ab", "--url", server.url, "--auth-token", TOKEN)
    assert again.stderr.strip().endswith(
        "answered 400: model 'ab' has no canary taking traffic and no 'previous' label to restore"
    )
    (repository / "ab" / "model.yaml").write_text(
        yaml.safe_dump(
            {**PYTHON_MODEL, "labels": {"stable": 1, "canary": 2}, "routing": {"weights": {"stable": 90, "canary": 10}}}
        )
    )
    ControlClient(server.url, token=TOKEN).set_routes("ab", weights={"stable": 90, "canary": 10})


def test_control_client_errors_are_one_line(control: ControlClient, server: ServerThread) -> None:
    with pytest.raises(RemoteError, match=r"^cannot reach the server at http://127.0.0.1:9: "):
        ControlClient("127.0.0.1:9", timeout_s=2).routes("ab")
    with pytest.raises(RemoteError) as unknown:
        control.set_routes("nope", weights={"1": 1})
    assert "answered 404: no model named 'nope' in repository" in str(unknown.value)
    with pytest.raises(RemoteError, match=r"answered 404: Request for unknown model: 'nope' is not found$"):
        control.experiment("nope")
    with pytest.raises(RemoteError, match=r"answered 400: unknown routing field\(s\) colour; expected weights"):
        control._call("POST", "/v2/models/ab/routes", {"colour": "red"})
    with pytest.raises(RemoteError, match=r"answered 405: method PUT not allowed on /v2/models/ab/routes/promote"):
        control._call("PUT", "/v2/models/ab/routes/promote", {})


# -- guardrail ---------------------------------------------------------------------------------


def test_guardrail_rolls_back_a_broken_canary_with_evidence(
    caller: Caller, control: ControlClient, repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sluice.serve.traffic")

    def rolled_back() -> bool:
        return ModelRepository(repository).config("broken").routing.weights == {"1": 50}

    # routing is random: send until each version has the guardrail's 20 requests and it has judged
    # (60 requests fell short of that in about one run in 160), a bounded number of times
    statuses: Counter[int] = Counter()
    for sent in range(1, 401):
        statuses[caller.infer("broken", X)[0]] += 1
        if sent % 10 == 0 and rolled_back():
            break
    assert statuses[500] >= 20 and set(statuses) == {200, 500}
    _wait(rolled_back, "the rollback")
    assert {caller.infer("broken", X)[0] for _ in range(30)} == {200}
    rollbacks = control.experiment("broken")["rollbacks"]
    assert len(rollbacks) == 1 and rollbacks[0]["variant"] == "2" and rollbacks[0]["automatic"]
    assert rollbacks[0]["evidence"].startswith("error rate 100.0% (")
    assert "guardrail: rolling back variant '2' of model 'broken': error rate 100.0%" in caplog.text


def test_guardrail_leaves_a_healthy_canary_alone(caller: Caller, control: ControlClient, repository: Path) -> None:
    assert {caller.infer("calm", X)[0] for _ in range(100)} == {200}
    assert control.experiment("calm")["rollbacks"] == []
    assert ModelRepository(repository).config("calm").routing.weights == {"1": 50, "2": 50}


# -- version policy ----------------------------------------------------------------------------


def test_version_policy_at_load_and_on_reload(caller: Caller, repository: Path) -> None:
    status, _, meta = caller.request("GET", "/v2/models/pol")
    assert (status, meta["versions"]) == (200, ["2", "3"])
    assert caller.request("GET", "/v2/models/pol/config")[2]["version_policy"] == {"latest": {"num_versions": 2}}
    index = {e["version"]: e for e in caller.request("POST", "/v2/repository/index", b"{}")[2] if e["name"] == "pol"}
    assert index["1"]["state"] == "UNAVAILABLE" and index["1"]["reason"].startswith("not served: outside the version")
    assert caller.request("POST", "/v2/models/pol/versions/1/infer", _body(X))[0] == 404
    for policy, served in (("all", ["1", "2", "3"]), ({"specific": [1, 3]}, ["1", "3"])):
        (repository / "pol" / "model.yaml").write_text(yaml.safe_dump({**PYTHON_MODEL, "versions": policy}))
        assert caller.request("POST", "/v2/repository/models/pol/load", b"{}")[0] == 200  # what --watch calls
        assert caller.request("GET", "/v2/models/pol")[2]["versions"] == served
    assert caller.request("GET", "/v2/models/pol/config")[2]["version_policy"] == {"specific": {"versions": ["1", "3"]}}
    index = {e["version"]: e for e in caller.request("POST", "/v2/repository/index", b"{}")[2] if e["name"] == "pol"}
    assert index["2"]["state"] == "UNAVAILABLE" and index["1"]["state"] == index["3"]["state"] == "READY"


def test_a_hand_edited_routing_to_a_missing_version_is_refused_and_the_old_one_serves(
    caller: Caller, repository: Path
) -> None:
    path = repository / "pol" / "model.yaml"
    path.write_text(yaml.safe_dump({**PYTHON_MODEL, "versions": "all", "routing": {"weights": {2: 50, 9: 50}}}))
    status, _, body = caller.request("POST", "/v2/repository/models/pol/load", b"{}")
    assert (status, body) == (
        400,
        {
            "error": f"{path}: routing variant '9' names no version on disk; versions: [1, 2, 3], labels: none",
        },
    )
    status, _, body = caller.infer("pol", X)
    assert (status, body["model_version"]) == (200, "3")  # still the previous settings: no routing


def test_watch_applies_a_new_version_policy_and_routing(tmp_path: Path) -> None:
    _model(tmp_path, "w", {1: HEALTHY, 2: HEALTHY, 3: HEALTHY})
    settings = ServeSettings(repository=tmp_path, port=0, log_level="warning", watch=True, watch_interval_s=0.05)
    with ServerThread(settings) as running:
        running.wait_ready(timeout_s=30)
        caller = Caller(running)
        try:
            assert caller.request("GET", "/v2/models/w")[2]["versions"] == ["3"]
            config = {**PYTHON_MODEL, "versions": {"specific": [1, 2]}, "routing": {"weights": {1: 1, 2: 0}}}
            (tmp_path / "w" / "model.yaml").write_text(yaml.safe_dump(config))
            _wait(lambda: caller.request("GET", "/v2/models/w")[2]["versions"] == ["1", "2"], "the reload")
            assert {caller.infer("w", X)[2]["model_version"] for _ in range(20)} == {"1"}
        finally:
            caller.close()
