"""Images as input: a directory (or s3:// prefix) of image files, one record per file; a column
of encoded images or of image paths (--image-column). Outputs equal transformers' own
computation, in input order; an image that cannot be read or decoded is an error record naming
its file and the reason, and every other image is predicted."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import sluice
from image_support import BAD, GOOD, ImageKit, expected, image_kit, read_bytes
from s3_support import S3Server, moto_s3
from sluice.errors import ConfigError, DataError, ErrorFractionExceeded, OutputConflict
from support import invoke, read_jsonl

__all__ = ["image_kit"]


def _parts(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def _errors(out: Path) -> list[dict[str, object]]:
    return [row for p in sorted((out / "_errors").glob("errors-*.jsonl")) for row in read_jsonl(p)]


def _check_outputs(table: pa.Table, kit: ImageKit, names: list[str]) -> None:
    want = expected(kit.model, read_bytes(kit.images, names))
    assert table.column("label").to_pylist() == want["label"].tolist()
    np.testing.assert_allclose(np.array(table.column("probabilities").to_pylist()), want["probabilities"], atol=1e-4)
    np.testing.assert_allclose(table.column("score").to_numpy(), want["score"], atol=1e-4)


@pytest.fixture
def tree(image_kit: ImageKit, tmp_path: Path) -> Path:
    """The kit's images, a folder of two more, a broken link and files Sluice skips (hidden, ``_``)."""
    root = tmp_path / "photos"
    shutil.copytree(image_kit.images, root)
    (root / "more").mkdir()
    shutil.copy(image_kit.images / GOOD[0], root / "more" / "a.jpeg")
    shutil.copy(image_kit.images / GOOD[1], root / "more" / "b.JPG")
    (root / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / ".hidden.jpg").write_bytes(b"skipped")
    (root / "_tmp").mkdir()
    (root / "_tmp" / "c.jpg").write_bytes(b"skipped")
    return root


def test_a_directory_of_images(image_kit: ImageKit, tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = sluice.predict(str(image_kit.model), str(tree), str(out), max_error_fraction=0.5, shard_rows=5)
    keys = sorted([*GOOD, *BAD, "gone.png", "more/a.jpeg", "more/b.JPG"])
    assert (summary.rows, summary.rows_failed, summary.shards) == (14, 3, 4)
    assert (summary.batch_size, summary.batch_size_source) == (64, "model")  # an image model's own size
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{i:05d}.parquet" for i in range(4)]
    table = _parts(out)
    good = [k for k in keys if k not in {*BAD, "gone.png"}]
    assert table.column_names == ["key", "label", "score", "probabilities"]
    assert table.column("key").to_pylist() == good  # input order: the files sorted by path
    _check_outputs(table, image_kit, [k if "/" not in k else {"more/a.jpeg": GOOD[0], "more/b.JPG": GOOD[1]}[k]
                                      for k in good])  # fmt: skip
    assert _errors(out) == [
        {"source": str(tree / "bad-000.jpg"), "row": 0, "key": "bad-000.jpg", "field": None,
         "error": "cannot decode the image: image file is truncated (0 bytes not processed)"},
        {"source": str(tree / "bad-001.jpg"), "row": 1, "key": "bad-001.jpg", "field": None,
         "error": "cannot decode the image: cannot identify image file"},
        {"source": str(tree / "gone.png"), "row": 2, "key": "gone.png", "field": "image",
         "error": f"cannot read the image file {tree / 'gone.png'}: the file does not exist"},
    ]  # fmt: skip


def test_a_rerun_resumes_and_a_changed_directory_is_refused(image_kit: ImageKit, tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    for name in GOOD[:6]:
        shutil.copy(image_kit.images / name, images / name)
    out = tmp_path / "out"
    sluice.predict(str(image_kit.model), str(images), str(out), shard_rows=3)
    again = sluice.predict(str(image_kit.model), str(images), str(out), shard_rows=3)
    assert (again.rows, again.shards_skipped) == (6, 2)
    shutil.copy(image_kit.images / GOOD[6], images / "zzz.jpg")
    with pytest.raises(OutputConflict):
        sluice.predict(str(image_kit.model), str(images), str(out), shard_rows=3)


def test_input_format_image_reads_every_file(image_kit: ImageKit, tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(image_kit.images / GOOD[0], images / "photo")  # no extension
    (images / "notes.txt").write_text("not an image\n")
    out = tmp_path / "out"
    summary = sluice.predict(str(image_kit.model), str(images), str(out), input_format="image", max_error_fraction=0.5)
    assert (summary.rows, summary.rows_failed) == (1, 1)
    assert _parts(out).column("key").to_pylist() == ["photo"]
    assert [e["key"] for e in _errors(out)] == ["notes.txt"]
    with pytest.raises(DataError, match=r"holds no data files \(\.parquet, \.csv, \.jsonl\)"):
        sluice.predict(str(image_kit.model), str(images), str(tmp_path / "out2"))


def test_a_glob_and_a_single_file(image_kit: ImageKit, tmp_path: Path) -> None:
    out = tmp_path / "glob"
    summary = sluice.predict(str(image_kit.model), str(image_kit.images / "img-00000[0-2].jpg"), str(out))
    assert summary.rows == 3
    assert _parts(out).column("key").to_pylist() == GOOD[:3]
    one = tmp_path / "one"
    sluice.predict(str(image_kit.model), str(image_kit.images / GOOD[4]), str(one))
    table = _parts(one)
    assert table.column("key").to_pylist() == [GOOD[4]]
    _check_outputs(table, image_kit, [GOOD[4]])


def test_table_files_are_not_mistaken_for_images(image_kit: ImageKit, tmp_path: Path) -> None:
    """A directory with data files beside images is read as those data files, as always."""
    mixed = tmp_path / "mixed"
    shutil.copytree(image_kit.images, mixed)
    pq.write_table(
        pa.table({"image": pa.array(read_bytes(image_kit.images, GOOD[:2]), pa.binary())}), mixed / "t.parquet"
    )
    summary = sluice.predict(str(image_kit.model), str(mixed), str(tmp_path / "out"))
    assert (summary.rows, summary.shards) == (2, 1)


# -- image columns -------------------------------------------------------------------------


def test_a_binary_image_column(image_kit: ImageKit, tmp_path: Path) -> None:
    data = read_bytes(image_kit.images, [GOOD[0], BAD[1], GOOD[1]])
    table = pa.table({"id": [10, 11, 12, 13], "photo": pa.array([data[0], data[1], None, data[2]], pa.binary())})
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    summary = sluice.predict(
        str(image_kit.model), str(tmp_path / "in.parquet"), str(out),
        image_column="photo", key_column="id", max_error_fraction=0.5,
    )  # fmt: skip
    assert (summary.rows, summary.rows_failed) == (2, 2)
    result = _parts(out)
    assert result.column("id").to_pylist() == [10, 13]
    _check_outputs(result, image_kit, [GOOD[0], GOOD[1]])
    errors = _errors(out)
    assert [(e["row"], e["key"], e["field"], e["error"]) for e in errors] == [
        (1, 11, None, "cannot decode the image: cannot identify image file"),
        (2, 12, "photo", "missing value"),
    ]


def test_in_memory_prediction_takes_the_image_column(image_kit: ImageKit) -> None:
    model = sluice.load_model(str(image_kit.model))
    table = pa.table({"photo": pa.array(read_bytes(image_kit.images, GOOD[:3]), pa.binary())})
    [batch] = list(sluice.predict_batches(model, table, image_column="photo"))
    _check_outputs(pa.Table.from_batches([batch]), image_kit, GOOD[:3])


def test_a_column_of_image_paths(image_kit: ImageKit, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(image_kit.images, data / "pics")
    paths = ["pics/" + GOOD[0], str(data / "pics" / GOOD[1]), "pics/missing.jpg", "pics/" + BAD[0], "pics/" + GOOD[2]]
    names = ["a", "b", "c", "d", "e", "f"]
    pacsv.write_csv(pa.table({"name": names, "path": [*paths, None]}), data / "list.csv")
    out = tmp_path / "out"
    summary = sluice.predict(
        str(image_kit.model), str(data / "list.csv"), str(out),
        image_column="path", key_column="name", include=["path"], max_error_fraction=0.5,
    )  # fmt: skip
    assert (summary.rows, summary.rows_failed) == (3, 3)
    result = _parts(out)
    assert result.column_names == ["name", "path", "label", "score", "probabilities"]
    assert result.column("path").to_pylist() == [paths[0], paths[1], paths[4]]
    _check_outputs(result, image_kit, [GOOD[0], GOOD[1], GOOD[2]])
    assert [(e["row"], e["key"], e["field"], e["error"]) for e in _errors(out)] == [
        (2, "c", "path", "cannot read the image 'pics/missing.jpg': the file does not exist"),
        (3, "d", None, "cannot decode the image: image file is truncated (0 bytes not processed)"),
        (5, "f", "path", "missing value"),
    ]


def test_image_column_mistakes_are_named(image_kit: ImageKit, models, tmp_path: Path) -> None:
    pq.write_table(pa.table({"n": [1.0], "photo": pa.array([b"x"], pa.binary())}), tmp_path / "in.parquet")
    with pytest.raises(
        DataError, match=r"^`image_column` 'nope' is not a column of the input; columns: \['n', 'photo'\]$"
    ):
        sluice.predict(str(image_kit.model), str(tmp_path / "in.parquet"), str(tmp_path / "o1"), image_column="nope")
    with pytest.raises(DataError, match=r"^`image_column` 'n' has type double; expected binary"):
        sluice.predict(str(image_kit.model), str(tmp_path / "in.parquet"), str(tmp_path / "o2"), image_column="n")
    with pytest.raises(ConfigError, match=r"`image_column` feeds a model's one BYTES input; model lr\.onnx has 0"):
        sluice.predict(str(models.onnx), str(tmp_path / "in.parquet"), str(tmp_path / "o3"), image_column="photo")


# -- object stores -------------------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with moto_s3(monkeypatch) as server:
        yield server


def test_an_s3_prefix_of_images_and_s3_paths(image_kit: ImageKit, tmp_path: Path, s3: S3Server) -> None:
    fs = s3.filesystem()
    fs.mkdir("pics")
    for name in [*GOOD[:5], BAD[0]]:
        fs.put(str(image_kit.images / name), f"pics/in/{name}")
    out = tmp_path / "out"
    summary = sluice.predict(
        str(image_kit.model), "s3://pics/in/", str(out), storage_options=s3.options, max_error_fraction=0.5,
        shard_rows=4,
    )  # fmt: skip
    assert (summary.rows, summary.rows_failed, summary.shards) == (5, 1, 2)
    table = _parts(out)
    assert table.column("key").to_pylist() == GOOD[:5]
    _check_outputs(table, image_kit, GOOD[:5])
    assert [(e["source"], e["key"]) for e in _errors(out)] == [("s3://pics/in/bad-000.jpg", "bad-000.jpg")]
    # a local table naming images on the object store
    uris = [f"s3://pics/in/{GOOD[3]}", f"s3://pics/in/{GOOD[1]}", "s3://pics/in/none.jpg"]
    pq.write_table(pa.table({"uri": uris}), tmp_path / "uris.parquet")
    by_uri = tmp_path / "by-uri"
    summary = sluice.predict(
        str(image_kit.model), str(tmp_path / "uris.parquet"), str(by_uri), image_column="uri", key_column="uri",
        storage_options=s3.options, max_error_fraction=0.5,
    )  # fmt: skip
    assert (summary.rows, summary.rows_failed) == (2, 1)
    _check_outputs(_parts(by_uri), image_kit, [GOOD[3], GOOD[1]])
    [error] = _errors(by_uri)
    assert error["error"] == "cannot read the image 's3://pics/in/none.jpg': the file does not exist"


# -- the command line ----------------------------------------------------------------------


def test_cli_predicts_a_directory_of_images(image_kit: ImageKit, tmp_path: Path) -> None:
    out = tmp_path / "out"
    failed = invoke("predict", "-m", image_kit.model, "-i", image_kit.images, "-o", out, "--quiet")
    assert failed.exit_code == 3, failed.output
    assert "2 of 14 records failed" in failed.output
    done = invoke(
        "predict", "-m", image_kit.model, "-i", image_kit.images, "-o", out, "--quiet", "--overwrite",
        "--max-error-fraction", "0.2", "--input-format", "image", "--batch-size", "5",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    table = _parts(out)
    assert table.column("key").to_pylist() == GOOD
    _check_outputs(table, image_kit, GOOD)
    pq.write_table(
        pa.table({"photo": pa.array(read_bytes(image_kit.images, GOOD[:2]), pa.binary())}), tmp_path / "t.parquet"
    )
    column = invoke("predict", "-m", image_kit.model, "-i", tmp_path / "t.parquet", "-o", tmp_path / "o2",
                    "--image-column", "photo", "--quiet")  # fmt: skip
    assert column.exit_code == 0, column.output
    _check_outputs(_parts(tmp_path / "o2"), image_kit, GOOD[:2])
    wrong = invoke("predict", "-m", image_kit.model, "-i", tmp_path / "t.parquet", "-o", tmp_path / "o3",
                   "--image-column", "nope", "--quiet")  # fmt: skip
    assert wrong.exit_code == 2
    assert "--image-column 'nope' is not a column of the input" in wrong.output


def test_help_names_the_image_options() -> None:
    text = invoke("predict", "--help").output
    assert "--image-column" in text
    assert "image: one record per image file" in " ".join(text.replace("│", " ").split())


def test_error_fraction_counts_bad_images(image_kit: ImageKit, tmp_path: Path) -> None:
    with pytest.raises(ErrorFractionExceeded, match=r"^2 of 14 records failed"):
        sluice.predict(str(image_kit.model), str(image_kit.images), str(tmp_path / "out"))
