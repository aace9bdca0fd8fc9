"""The backends' API without starting an engine: spec fields, lazy imports, install hints, CLI flags."""

from __future__ import annotations

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
         "Install it with: pip install 'sluice[spark]'"),
        (RayEngine(), "ray", "`backend='ray'` needs the Python package 'ray', which is not installed. "
         "Install it with: pip install 'sluice[ray]'"),
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
