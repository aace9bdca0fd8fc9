"""model.yaml's version policy and the repository-level pickle opt-in."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sluice.errors import ConfigError, UnsafeModelError
from sluice.models import load_model
from sluice.models.config import LoadOptions, ModelConfig, read_yaml_model
from sluice.models.policy_config import LatestVersions, SpecificVersions, select_versions
from sluice.models.repository import ModelRepository
from sluice.serve.metadata import version_policy


@pytest.mark.parametrize(
    ("text", "served", "document"),
    [
        ("", [5, 7], {"latest": {"num_versions": 1}}),  # the default: latest 1 (7), plus the labelled 5
        ("versions: {latest: 3}", [3, 5, 7], {"latest": {"num_versions": 3}}),
        ("versions: all", [1, 3, 5, 7], {"all": {}}),
        ("versions: {specific: [1, 3, 9]}", [1, 3, 5], {"specific": {"versions": ["1", "3", "9"]}}),
    ],
)
def test_version_policy(tmp_path: Path, text: str, served: list[int], document: dict) -> None:
    (tmp_path / "model.yaml").write_text(text + "\nlabels: {stable: 5}\n")
    config = read_yaml_model(tmp_path / "model.yaml", ModelConfig)
    policy_versions = select_versions(config.versions, [1, 3, 5, 7])
    assert sorted({*policy_versions, *config.labels.values()}) == served
    assert version_policy(config.versions) == document


def test_version_policy_errors_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text("versions: {latest: 0}\n")
    with pytest.raises(ConfigError, match=r"model.yaml: versions\.LatestVersions\.latest: Input should be greater"):
        read_yaml_model(tmp_path / "model.yaml", ModelConfig)
    assert select_versions(LatestVersions(latest=5), [1, 2]) == [1, 2]
    assert select_versions(SpecificVersions(specific=[2]), [1, 2]) == [2]


def test_pickle_in_a_repository_needs_an_explicit_opt_in(tmp_path: Path, models) -> None:
    (tmp_path / "clf" / "1").mkdir(parents=True)
    shutil.copy(models.pickle, tmp_path / "clf" / "1" / "model.pkl")
    with pytest.raises(UnsafeModelError) as refused:
        load_model("clf", tmp_path)
    assert str(refused.value) == (
        f"model 'clf' version 1: {tmp_path / 'clf' / '1' / 'model.pkl'} is a pickle/joblib file, and loading one "
        "runs whatever code it contains. Save it with skops instead, pass `trust_pickle=True`, or opt this "
        f"repository in with 'trust_pickle: true' in {tmp_path / 'sluice-repository.yaml'}"
    )
    assert load_model("clf", tmp_path, options=LoadOptions(trust_pickle=True)).source.format == "pickle"
    (tmp_path / "sluice-repository.yaml").write_text("trust_pickle: true\n")
    assert load_model("clf", tmp_path).source.format == "pickle"
    assert ModelRepository(tmp_path).settings().trust_pickle
    (tmp_path / "sluice-repository.yaml").write_text("trust_pickles: yes\n")
    with pytest.raises(ConfigError, match=r"sluice-repository.yaml: trust_pickles: Extra inputs are not permitted"):
        load_model("clf", tmp_path)
