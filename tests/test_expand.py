"""`augbatch expand` end to end: real photos and TFRecords in, TFRecord shards out, read back with
tf.data; determinism; config errors."""
import collections
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli import main
from pipeline import sources
from tests.conftest import (SAMPLE_TFRECORDS, assert_accounted, copy_sample_photos,
                            decode_file, read_outputs, run_job, shard_bytes)

CHAIN = [
    {"op": "tf.image.random_flip_left_right"},
    {"op": "tf.image.random_brightness", "max_delta": 0.2},
    {"op": "tf.image.random_contrast", "lower": 0.7, "upper": 1.3, "probability": 0.5},
    {"one_of": [{"op": "tf.image.random_hue", "max_delta": 0.05},
                {"op": "tf.image.random_crop_and_resize", "scale": [0.7, 1.0]}]},
]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """One real run over a small class folder, shared by the read-back tests."""
    base = tmp_path_factory.mktemp("folder_run")
    images = copy_sample_photos(base / "images")
    out = base / "out"
    manifest = run_job(images, out, CHAIN, copies=2, seed=11, num_shards=2, format="png")
    return images, str(out), manifest


def test_folder_outputs_read_back_with_tf_data(folder_run):
    images, out, manifest = folder_run
    rows = read_outputs(out)
    assert len(rows) == 9 * 3  # 9 inputs x (original + 2 copies)
    assert sorted(os.listdir(out)) == ["augmented-00000-of-00002.tfrecord",
                                       "augmented-00001-of-00002.tfrecord", "errors.jsonl",
                                       "manifest.json"]
    classes = sorted(os.listdir(images))
    by_source = collections.defaultdict(set)
    for row in rows:
        key = row["source_id"]
        by_source[key].add(row["copy_index"])
        class_name = key.split("/")[0]
        assert row["image/class/label"] == classes.index(class_name)
        assert row["image/class/text"].decode() == class_name
        original = decode_file(os.path.join(images, key))
        # The chain keeps the size: every copy has the input's shape.
        assert row["image"].shape == original.shape
        assert (row["image/height"], row["image/width"]) == original.shape[:2]
        assert row["image/format"] == b"png"
        assert row["augment/seed"] == 11
        assert row["augment/config_hash"].decode() == manifest["config_hash"]
    assert all(copies == {0, 1, 2} for copies in by_source.values())
    assert len(by_source) == 9


def test_manifest_counts(folder_run):
    _, out, manifest = folder_run
    on_disk = json.load(open(os.path.join(out, "manifest.json")))
    assert on_disk == manifest
    counts = manifest["counts"]
    assert counts["discovered"] == 9 and counts["written"] == 9 and counts["errored"] == 0
    assert counts["outputs"] == 27
    assert counts["per_label"] == {"objects": 9, "portraits": 9, "textures": 9}
    assert counts["per_copy"] == {"0": 9, "1": 9, "2": 9}
    assert sum(counts["per_shard"].values()) == 27
    assert manifest["input"]["label_names"] == ["objects", "portraits", "textures"]
    assert manifest["versions"]["tensorflow"]
    assert_accounted(manifest)


def test_original_copy_keeps_input_pixels_and_copies_differ(folder_run):
    images, out, _ = folder_run
    rows = read_outputs(out)
    for row in rows:
        original = decode_file(os.path.join(images, row["source_id"]))
        if row["copy_index"] == 0:
            np.testing.assert_array_equal(row["image"], original)
    copies = {(r["source_id"], r["copy_index"]): r["image"] for r in rows}
    for key in {r["source_id"] for r in rows}:
        assert not np.array_equal(copies[key, 1], copies[key, 2]), key
        assert not np.array_equal(copies[key, 0], copies[key, 1]), key


def test_same_inputs_and_config_give_identical_bytes(folder_run, tmp_path):
    images, out, _ = folder_run
    # Another batch size changes how Beam groups images; the bytes must not change.
    run_job(images, tmp_path / "again", CHAIN, copies=2, seed=11, num_shards=2, format="png",
            batch_size=1)
    assert shard_bytes(tmp_path / "again") == shard_bytes(out)


def test_another_seed_gives_other_images(folder_run, tmp_path):
    images, out, _ = folder_run
    run_job(images, tmp_path / "seed12", CHAIN, copies=2, seed=12, num_shards=2, format="png")
    first = {(r["source_id"], r["copy_index"]): r["image"] for r in read_outputs(out)}
    second = {(r["source_id"], r["copy_index"]): r["image"]
              for r in read_outputs(tmp_path / "seed12")}
    assert first.keys() == second.keys()
    differ = [k for k in first if k[1] > 0 and not np.array_equal(first[k], second[k])]
    assert len(differ) == 18  # every augmented copy; the originals stay equal
    assert all(np.array_equal(first[k], second[k]) for k in first if k[1] == 0)


def test_tfrecord_input_with_passthrough_features_and_gzip(tmp_path):
    import tensorflow as tf
    out = tmp_path / "out"
    manifest = run_job(os.path.join(SAMPLE_TFRECORDS, "*.tfrecord"), out,
                       [{"op": "tf.image.random_flip_up_down"}], copies=1, keep_original=False,
                       seed=3, num_shards=3, compression="gzip")
    assert_accounted(manifest)
    assert manifest["input"]["kind"] == "tfrecord"
    assert manifest["counts"]["discovered"] == 36 and manifest["counts"]["written"] == 36
    rows = read_outputs(out, {"image/filename": tf.io.FixedLenFeature([], tf.string)})
    assert len(rows) == 36
    inputs = {}
    for path in sorted(os.listdir(SAMPLE_TFRECORDS)):
        for i, record in enumerate(tf.data.TFRecordDataset(os.path.join(SAMPLE_TFRECORDS, path))):
            ex = tf.train.Example.FromString(record.numpy()).features.feature
            inputs[f"{path}:{i}"] = (ex["image/class/label"].int64_list.value[0],
                                     ex["image/filename"].bytes_list.value[0])
    for row in rows:
        label, filename = inputs[row["source_id"]]
        assert row["image/class/label"] == label
        assert row["image/filename"] == filename  # passed through untouched
        assert row["copy_index"] == 1
    again = tmp_path / "again"
    run_job(os.path.join(SAMPLE_TFRECORDS, "*.tfrecord"), again,
            [{"op": "tf.image.random_flip_up_down"}], copies=1, keep_original=False, seed=3,
            num_shards=3, compression="gzip", batch_size=5)
    assert shard_bytes(again) == shard_bytes(out)
    assert all(name.endswith(".tfrecord.gz") for name in shard_bytes(out))


def _write_config(tmp_path, chain, **top):
    import yaml
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**top, "augment": {"copies": 1, "chain": chain}}))
    return str(path)


@pytest.mark.parametrize("chain, message", [
    ([{"op": "tf.image.random_brightnes", "max_delta": 0.1}],
     "augment.chain[0].op: unknown op 'tf.image.random_brightnes' (did you mean "
     "'tf.image.random_brightness'?)"),
    ([{"op": "tf.image.random_flip_left_right"}, {"op": "tf.image.random_hue", "max_delta": 0.1},
      {"op": "tf.image.random_brightness", "max_delta": "a lot"}],
     "augment.chain[2].max_delta: expected a number, got 'a lot'"),
    ([{"op": "tf.image.random_brightness", "max_detla": 0.1}],
     "augment.chain[0].max_detla: unknown parameter of tf.image.random_brightness (did you "
     "mean 'max_delta'?)"),
    ([{"op": "tf.image.random_contrast", "lower": 1.5, "upper": 0.5}],
     "augment.chain[0]: lower must not exceed upper"),
])
def test_config_errors_name_the_config_path(tmp_path, chain, message):
    config = _write_config(tmp_path, chain, input="sample_data/images")
    result = CliRunner().invoke(main, ["expand", "-c", config, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not os.path.exists(tmp_path / "out")  # refused before the pipeline starts


def test_missing_input_is_a_clear_error(tmp_path):
    config = _write_config(tmp_path, [{"op": "tf.image.random_flip_left_right"}])
    result = CliRunner().invoke(main, ["expand", "-c", config, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "input: no input given" in result.output
    result = CliRunner().invoke(main, ["expand", "-c", config, "-i", str(tmp_path / "nope"),
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.output


def test_cli_expand_refuses_non_empty_output_unless_overwrite(small_folder, tmp_path):
    config = _write_config(tmp_path, [{"op": "tf.image.random_flip_left_right"}],
                           input=small_folder)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["expand", "-c", config, "-o", str(out), "--num-shards", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "is not empty" in result.output
    # --overwrite deletes only what an earlier run wrote: a file of the user's is refused.
    result = CliRunner().invoke(main, args + ["--overwrite"])
    assert result.exit_code == 2 and "augbatch did not write: notes.txt" in result.output
    assert os.listdir(out) == ["notes.txt"]
    (out / "notes.txt").unlink()
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, args + ["--overwrite"])
    assert result.exit_code == 0, result.output
    assert "written: 9" in result.output
    assert len(read_outputs(str(out))) == 18


def test_shard_records_are_framed_as_tensorflow_frames_them(tmp_path):
    """The shard writer writes each record in three parts (sources.frame_parts), around the
    image bytes, not copied into one: the same bytes as TensorFlow's own TFRecord writer."""
    records = [b"", b"x", bytes(range(256)) * 300, b"\x00" * 70_001]
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    with open(path, "rb") as f:
        written_by_tf = f.read()
    in_parts = b"".join(head + record + tail for record in records
                        for head, tail in [sources.frame_parts(record)])
    assert in_parts == written_by_tf == b"".join(map(sources.frame_record, records))
    assert sources.records_of(in_parts) == records
    # A record given in pieces (a bucket entry: its header, key and framed record), framed in
    # one join: the same bytes as its pieces joined, then framed.
    for pieces in ([], [b""], [b"head", b""], [b"ab", records[2], b"\x00", records[3]]):
        assert sources.frame_joined(pieces) == sources.frame_record(b"".join(pieces))
    joined = [sources.frame_joined([record[:7], record[7:]]) for record in records]
    assert b"".join(joined) == written_by_tf


def test_damaged_records_are_refused_where_they_are_damaged():
    """A record cut short (in its data or its CRC) or with a byte changed is refused at its
    offset, after the records before it."""
    records = [b"first", bytes(range(256)) * 4, b"third"]
    whole = b"".join(map(sources.frame_record, records))
    second = len(sources.frame_record(records[0]))
    third = second + len(sources.frame_record(records[1]))

    def changed(at):  # one byte of the file changed
        return whole[:at] + bytes([whole[at] ^ 1]) + whole[at + 1:]
    for damaged, message in [(whole[:third - 2], "truncated record \\(expected"),
                             (whole[:third - 5], "truncated record \\(expected"),
                             (whole[:second + 5], "truncated record header"),
                             (changed(second + 3), "corrupt record length"),
                             (changed(second + 40), "corrupt record data"),
                             (changed(third - 1), "corrupt record data")]:
        read = []
        with pytest.raises(sources.RecordError, match=f"{message}.* at byte offset {second}$"):
            read.extend(sources.iter_records(io.BytesIO(damaged)))
        assert read == records[:1]
