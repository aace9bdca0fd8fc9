"""The backends' API without starting an engine: spec fields, lazy imports, install hints, CLI flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.backends.ray import RayEngine
from sluice.backends.spark import SparkEngine
from sluice.batch import JobSpec, run_job
from sluice.errors import ConfigError, MissingDependency
from support import invoke


def test_backend_is_a_validated_spec_field() -> None:
    spec = JobSpec.build(model="m.onnx", input="in/", output="out/", backend="spark", spark_master="local[2]")
    assert (spec.backend, spec.spark_master, spec.ray_address) == ("spark", "local[2]", None)
    with pytest.raises(ConfigError) as info:
        JobSpec.build(model="m.onnx", input="in/", output="out/", backend="flink")
    assert str(info.value) == "invalid job: backend: Input should be 'local', 'spark' or 'ray'"


def test_the_local_engine_refuses_a_spec_for_another_backend() -> None:
    with pytest.raises(ConfigError) as info:
        run_job(JobSpec.build(model="m.onnx", input="in/", output="out/", backend="ray"))
    assert str(info.value) == (
        "sluice.batch.run_job runs jobs on this machine; "
        "run backend 'ray' with sluice.run_job (sluice.backends.run_job)"
    )


def test_importing_sluice_and_its_backends_loads_no_engine() -> None:
    code = (
        "import sys, sluice, sluice.backends, sluice.backends.spark, sluice.backends.ray; "
        "sluice.predict; sluice.backends.run_job; "
        "print(sorted(m for m in ('pyspark', 'py4j', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("engine", "module", "hint"),
    [
        (SparkEngine(), "pyspark.sql", "`backend='spark'` needs the Python package 'pyspark', which is not installed. "
         "Install it from the Sluice checkout with: make install-spark (or .venv/bin/pip install -e '.[spark]')"),
        (RayEngine(), "ray", "`backend='ray'` needs the Python package 'ray', which is not installed. "
         "Install it from the Sluice checkout with: make install-ray (or .venv/bin/pip install -e '.[ray]')"),
    ],
)  # fmt: skip
def test_a_missing_engine_says_which_extra_to_install(
    engine: SparkEngine | RayEngine, module: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingDependency) as info:
        engine.__enter__()
    assert str(info.value) == hint
    assert info.value.params == ("backend",)


def test_predict_help_lists_the_backend_flags(tmp_path: Path) -> None:
    result = invoke("predict", "--help")
    assert result.exit_code == 0
    for flag in ("--backend", "--spark-master", "--ray-address"):
        assert flag in result.output


# -- side effects only on the sessions Sluice starts ------------------------------------------


def test_only_a_local_spark_master_gets_loopback_and_this_interpreter() -> None:
    from sluice.backends.spark import local_environment

    assert local_environment("local[2]") == {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    assert local_environment("local-cluster[2,1,1024]")["SPARK_LOCAL_IP"] == "127.0.0.1"
    for master in ("spark://head:7077", "yarn", "k8s://https://api:6443"):
        assert local_environment(master) == {}


def test_only_a_local_ray_instance_gets_its_auth_and_usage_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.backends.ray import local_environment

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    assert local_environment(None) == local_environment("local") == local
    assert local_environment("ray://head:10001") == local_environment("10.0.0.5:6379") == {}
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")  # what ray.init joins when given no address
    assert local_environment(None) == {}


@pytest.mark.parametrize(
    ("module", "address"), [("sluice.backends.spark", "spark://head:7077"), ("sluice.backends.ray", "ray://head:10001")]
)
def test_the_environment_after_joining_a_cluster_is_unchanged(module: str, address: str) -> None:
    import importlib

    from sluice.backends.environment import ScopedEnviron

    before = dict(os.environ)
    with ScopedEnviron(importlib.import_module(module).local_environment(address)):
        assert dict(os.environ) == before
    assert dict(os.environ) == before


def test_scoped_settings_are_removed_after_and_never_override_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.backends.environment import ScopedEnviron

    monkeypatch.delenv("SPARK_LOCAL_IP", raising=False)
    monkeypatch.setenv("PYSPARK_PYTHON", "/opt/python")
    with ScopedEnviron({"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": "/usr/bin/python3"}):
        assert (os.environ["SPARK_LOCAL_IP"], os.environ["PYSPARK_PYTHON"]) == ("127.0.0.1", "/opt/python")
    assert ("SPARK_LOCAL_IP" in os.environ, os.environ["PYSPARK_PYTHON"]) == (False, "/opt/python")
