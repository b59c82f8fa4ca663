"""output.tfds: tfds.builder_from_directory loads the output with no extra code."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline import config, inspection
from pipeline.errors import ConfigError
from tests.conftest import ROOT, assert_accounted, run_job, shard_bytes

FLIP = [{"op": "tf.image.random_flip_left_right"}]
DETECTION = os.path.join(ROOT, "sample_data", "detection")


def test_a_class_folder_run_loads_with_builder_from_directory(small_folder, tmp_path):
    out = tmp_path / "out"
    manifest = run_job(small_folder, out, FLIP, copies=1, num_shards=2, tfds=True)
    assert_accounted(manifest)
    assert sorted(manifest["output"]["tfds_files"]) == [
        "dataset_info.json", "features.json", "label.labels.txt"]
    builder = tfds.builder_from_directory(str(out))
    assert builder.info.splits["train"].num_examples == 18  # 9 inputs x (copy 0 + 1 copy)
    assert builder.info.splits["train"].num_shards == 2
    assert builder.info.features["label"].names == ["objects", "portraits", "textures"]
    rows = list(builder.as_dataset(split="train"))
    assert len(rows) == 18
    assert {row["image"].shape[-1] for row in rows} == {3}
    assert sorted(int(row["label"]) for row in rows) == [0] * 6 + [1] * 6 + [2] * 6
    image, label = next(iter(builder.as_dataset(split="train", as_supervised=True)))
    assert image.dtype.name == "uint8" and label.dtype.name == "int64"
    # augbatch inspect reads the keys the manifest names.
    report = inspection.scan(str(out), verify=True)
    assert report.problems == [] and sum(report.labels.values()) == 18
    assert sorted(report.labels) == [0, 1, 2]
    # The shards keep augbatch's names (the template in dataset_info.json says so).
    assert sorted(shard_bytes(out)) == ["augmented-00000-of-00002.tfrecord",
                                        "augmented-00001-of-00002.tfrecord"]


def test_an_empty_last_class_folder_is_still_a_class_of_the_tfds_label(small_folder, tmp_path):
    """An empty class folder is a class (Keras' image_dataset_from_directory counts it too):
    the ClassLabel declares it even with no record, so a model sized from num_classes fits."""
    os.makedirs(os.path.join(small_folder, "zucchini"))
    out = tmp_path / "out"
    manifest = run_job(small_folder, out, FLIP, copies=0, tfds=True)
    assert manifest["input"]["label_map"]["zucchini"] == 3
    label = tfds.builder_from_directory(str(out)).info.features["label"]
    assert label.num_classes == 4
    assert label.names == ["objects", "portraits", "textures", "zucchini"]


def test_boxes_and_class_masks_load_as_tfds_objects(tmp_path):
    """The OD API sample records: boxes as a BBoxFeature sequence with their classes, the same
    boxes the OD API keys hold (kept beside them); a DeepLab record's class mask as an image."""
    out = tmp_path / "out"
    manifest = run_job(os.path.join(DETECTION, "objects.tfrecord"), out, FLIP, copies=1,
                       num_shards=1, tfds=True, format="png")
    assert_accounted(manifest)
    builder = tfds.builder_from_directory(str(out))
    assert "label" not in builder.info.features  # detection records have no class label
    # One shard, read in order: the records line up with a plain read of the file.
    loaded = list(builder.as_dataset(split="train", shuffle_files=False))
    od_api = read_outputs_od_api(out)
    assert len(loaded) == len(od_api) == builder.info.splits["train"].num_examples
    for row, record in zip(loaded, od_api):
        boxes = np.stack([record[k] for k in ("ymin", "xmin", "ymax", "xmax")], 1)
        np.testing.assert_allclose(row["objects"]["bbox"].numpy(), boxes.reshape(-1, 4))
        assert row["objects"]["label"].numpy().tolist() == record["label"]
        assert row["image"].shape[-1] == 3
        # Instance masks: one per box, the image's size, 0/1 (nearest sampled), tight boxes.
        masks = row["objects"]["mask"].numpy()
        height, width = row["image"].shape[:2]
        assert masks.shape == (len(boxes), height, width, 1)
        assert set(np.unique(masks)) <= {0, 1}
        for mask, box in zip(masks[..., 0], boxes):
            ys, xs = np.nonzero(mask)
            tight = [ys.min() / height, xs.min() / width, (ys.max() + 1) / height,
                     (xs.max() + 1) / width]
            np.testing.assert_allclose(tight, box, atol=1e-5)

    seg = tmp_path / "seg"
    run_job(os.path.join(DETECTION, "segmentation.tfrecord"), seg,
            [{"op": "tf.image.random_flip_left_right"}], copies=1, num_shards=1, tfds=True,
            format="png")
    builder = tfds.builder_from_directory(str(seg))
    for row in builder.as_dataset(split="train"):
        assert row["segmentation_mask"].shape[:2] == row["image"].shape[:2]
        assert row["segmentation_mask"].shape[-1] == 1


def read_outputs_od_api(out):
    """The records in shard order, their OD API boxes and classes (raw protos)."""
    import glob
    import tensorflow as tf
    rows = []
    for path in sorted(glob.glob(str(out / "*.tfrecord"))):
        for record in tf.data.TFRecordDataset(path):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            assert "image/encoded" not in feature and "image" in feature
            rows.append({**{k: list(feature[f"image/object/bbox/{k}"].float_list.value)
                            for k in ("ymin", "xmin", "ymax", "xmax")},
                         "label": list(feature["image/object/class/label"].int64_list.value)})
    return rows


def test_tfds_needs_uncompressed_shards(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("output: {tfds: true, compression: gzip}\naugment: {copies: 0}\n")
    with pytest.raises(ConfigError, match="output.tfds: TensorFlow Datasets reads "
                                          "uncompressed TFRecord files only"):
        config.load(str(cfg), require_paths=False)
    cfg.write_text("output: {tfds: true}\naugment: {copies: 0}\n")
    assert config.load(str(cfg), require_paths=False).tfds


def test_a_split_dataset_loads_split_by_split(tmp_path):
    """A manifest with a split column: train augmented, val untouched, each split a TFDS
    split with its own shards and size; class names from the manifest's labels."""
    import shutil
    from tests.conftest import SAMPLE_IMAGES
    data = tmp_path / "data"
    names = ["objects/coffee_01.jpg", "objects/coffee_02.jpg", "portraits/chelsea_01.jpg"]
    for name in names:
        os.makedirs(data / os.path.dirname(name), exist_ok=True)
        shutil.copy(os.path.join(SAMPLE_IMAGES, name), data / name)
    (data / "all.jsonl").write_text("".join(
        json.dumps({"path": n, "label": n.split("/")[0], "split": s}) + "\n"
        for n, s in zip(names, ["train", "train", "val"])))
    out = tmp_path / "out"
    manifest = run_job(str(data / "all.jsonl"), out, FLIP, copies=2, tfds=True)
    assert_accounted(manifest)
    builder = tfds.builder_from_directory(str(out))
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
        "train": 6, "val": 1}  # 2 inputs x (copy 0 + 2 copies); val: copy 0 only
    assert builder.info.features["label"].names == ["objects", "portraits"]
    assert [int(row["label"]) for row in builder.as_dataset(split="val")] == [1]
    assert sorted(int(row["label"]) for row in builder.as_dataset(split="train")) == [0] * 6
    info = json.loads((out / "dataset_info.json").read_text())
    assert {s["name"]: s["filepathTemplate"] for s in info["splits"]} == {
        "train": "augmented-train-{SHARD_X_OF_Y}.tfrecord",
        "val": "augmented-val-{SHARD_X_OF_Y}.tfrecord"}
