"""Detection and segmentation records end to end: OD API / DeepLab tf.Examples in, the same keys
out, read back as the OD API reads them, checked against the pixels."""
import dataclasses
import hashlib
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipeline import augment, config, run
from pipeline import chain as chain_mod
from tests.conftest import ROOT, assert_accounted, run_job

# The OD API's TfExampleDecoder keys (object_detection/data_decoders/tf_example_decoder.py).
OD_API_SPEC = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string),
    "image/format": tf.io.FixedLenFeature((), tf.string),
    "image/height": tf.io.FixedLenFeature((), tf.int64),
    "image/width": tf.io.FixedLenFeature((), tf.int64),
    "image/source_id": tf.io.FixedLenFeature((), tf.string),
    "image/key/sha256": tf.io.FixedLenFeature((), tf.string),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/difficult": tf.io.VarLenFeature(tf.int64),
    "image/object/mask": tf.io.VarLenFeature(tf.string),
    "augment/copy_index": tf.io.FixedLenFeature((), tf.int64),
}
H, W = 64, 96
# Two bright rectangles on a dark image: (top, left, bottom, right) in pixels, and a class each.
OBJECTS = [((10, 12, 30, 40), 1, b"cat"), ((34, 50, 58, 86), 2, b"dog")]


def _png(array):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _feature(values):
    if isinstance(values[0], bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if isinstance(values[0], float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def od_api_record(source_id=b"42", mask_size=(H, W), boxes=True):
    image = np.full((H, W, 3), 15, np.uint8)
    masks = []
    for (top, left, bottom, right), label, _ in OBJECTS:
        image[top:bottom, left:right] = 100 + 60 * label
        mask = np.zeros(mask_size, np.uint8)
        mask[top:bottom, left:right] = 1
        masks.append(_png(mask))
    data = _png(image)
    features = {"image/encoded": _feature([data]), "image/format": _feature([b"png"]),
                "image/height": _feature([H]), "image/width": _feature([W]),
                "image/source_id": _feature([source_id]),
                "image/key/sha256": _feature([b"stale"])}
    if boxes:
        for i, key in enumerate(("ymin", "xmin", "ymax", "xmax")):
            features[f"image/object/bbox/{key}"] = _feature(
                [float(box[i]) / (H if i % 2 == 0 else W) for box, _, _ in OBJECTS])
        features.update({"image/object/class/label": _feature([lab for _, lab, _ in OBJECTS]),
                         "image/object/class/text": _feature([t for _, _, t in OBJECTS]),
                         "image/object/difficult": _feature([0, 1]),
                         "image/object/mask": _feature(masks)})
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_records(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def read_od_api(out):
    files = sorted(p.path for p in os.scandir(out) if p.name.endswith(".tfrecord"))
    rows = []
    for record in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(record, OD_API_SPEC)
        row = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
               for k, v in parsed.items()}
        row["image"] = tf.io.decode_image(parsed["image/encoded"]).numpy()
        example = tf.train.Example.FromString(record.numpy())
        row["augment/key"] = example.features.feature["augment/key"].bytes_list.value[0]
        rows.append(row)
    return rows


CHAIN = [{"op": "tf.image.random_flip_left_right"},
         {"op": "tfa.image.rotate", "max_degrees": 20, "interpolation": "nearest"},
         {"op": "tf.image.random_crop", "height": 56, "width": 84},
         {"op": "tf.image.adjust_jpeg_quality", "jpeg_quality": 100}]  # (a pixels-only op)


# Flip, rotate and crop alone: under opencv-uint8 every stage runs on the uint8 pixels, with
# no float32 round trip.
MOVES_ONLY = CHAIN[:3]
# Flips, a rotation of the uint8 pixels and mild colour on levels: a chain exact in any batch,
# whose copies go through it four at a time (augment.CHUNK_COPIES) while their targets follow
# the geometry's own draws.
IN_CHUNKS = [{"op": "tf.image.random_flip_left_right"}, {"op": "tf.image.random_flip_up_down"},
             CHAIN[1], {"op": "tf.image.random_brightness", "max_delta": 0.02},
             {"op": "tf.image.random_contrast", "lower": 0.95, "upper": 1.05}]


# (the records' PNGs are RGB: decoded in the augment call, as a run decodes them)
@pytest.mark.parametrize("kernel,chain", [
    pytest.param(kernel, CHAIN, id=kernel) for kernel in ("tensorflow", "opencv", "opencv-uint8")
] + [pytest.param("opencv-uint8", MOVES_ONLY, id="opencv-uint8-moves-only"),
       pytest.param("opencv-uint8", IN_CHUNKS, id="in-chunks")])
def test_od_api_records_come_out_with_boxes_on_their_objects(tmp_path, kernel, chain):
    if chain is MOVES_ONLY:
        assert {kind for kind, _, _ in augment.plan(
            chain_mod.normalize(chain), False, uint8_geometry=True)} == {"uint8"}
    if chain is IN_CHUNKS:
        assert augment.build_chain(chain_mod.normalize(chain), kernel=kernel).exact_in_batches
    records = write_records(tmp_path / "in.tfrecord", [od_api_record(), od_api_record(b"43")])
    manifest = run_job(records, tmp_path / "out", chain, copies=6, format="png", kernel=kernel)
    assert_accounted(manifest)
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["outputs"] == 14
    rows = read_od_api(tmp_path / "out")
    assert {r["image/source_id"] for r in rows} == {b"42", b"43"}  # the input's own id kept
    assert {r["augment/key"] for r in rows} == {b"in.tfrecord:0", b"in.tfrecord:1"}
    kept = 0
    for row in rows:
        image = row["image"]
        height, width = image.shape[:2]
        assert (row["image/height"], row["image/width"]) == (height, width)
        assert row["image/key/sha256"].decode() == hashlib.sha256(
            row["image/encoded"]).hexdigest()
        lists = [row[f"image/object/{k}"] for k in ("bbox/ymin", "bbox/xmin", "bbox/ymax",
                                                    "bbox/xmax", "class/label", "class/text",
                                                    "difficult", "mask")]
        assert len({len(v) for v in lists}) == 1  # parallel lists stay parallel
        for i, label in enumerate(row["image/object/class/label"]):
            kept += 1
            assert (label, row["image/object/difficult"][i]) in {(1, 0), (2, 1)}
            assert row["image/object/class/text"][i] == {1: b"cat", 2: b"dog"}[label]
            value = 100 + 60 * label
            object_pixels = np.abs(image[..., 0].astype(int) - value) < 25  # (JPEG noise)
            ys, xs = np.nonzero(object_pixels)
            truth = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
            box = np.array([row[f"image/object/bbox/{k}"][i] for k in ("ymin", "xmin", "ymax",
                                                                       "xmax")])
            assert np.abs(box * [height, width, height, width] - truth).max() <= 1.001
            mask = np.asarray(Image.open(io.BytesIO(row["image/object/mask"][i])))
            assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 1}
            assert ((mask > 0) & object_pixels).sum() / ((mask > 0) | object_pixels).sum() > 0.9
    assert kept >= 20
    assert manifest["targets"]["objects_kept"] == kept - 4  # (copy 0's 4 objects not counted)


def test_a_record_whose_masks_do_not_fit_is_an_error_and_the_others_are_written(tmp_path):
    records = write_records(tmp_path / "in.tfrecord", [
        od_api_record(), od_api_record(b"43", mask_size=(H, W - 1)),
        od_api_record(b"44", boxes=False)])
    manifest = run_job(records, tmp_path / "out", CHAIN, copies=1)
    assert_accounted(manifest)
    assert manifest["counts"]["written"] == 1 and manifest["counts"]["errored"] == 2
    errors = [json.loads(line) for line in open(tmp_path / "out" / "errors.jsonl")]
    by_key = {e["key"]: e["message"] for e in errors}
    assert "95x64, the image 96x64" in by_key["in.tfrecord:1"]
    assert "record 1 of" in by_key["in.tfrecord:1"]
    assert "no boxes or segmentation mask" in by_key["in.tfrecord:2"]


def test_a_chain_that_cannot_carry_boxes_is_refused_before_anything_is_written(tmp_path):
    records = write_records(tmp_path / "in.tfrecord", [od_api_record()])
    config_file = tmp_path / "c.yaml"
    config_file.write_text("augment:\n  chain:\n    - op: tf.image.random_flip_left_right\n"
                           "    - op: tfa.image.elastic_distortion\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["expand", "--config", str(config_file), "--input",
                                       records, "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert "augment.chain[1].op" in result.output and "cannot carry" in result.output
    assert "tfa.image.rotate" in result.output  # the hint names an op that can
    assert not out.exists()


def test_rules_drop_copies_without_objects_and_count_everything(tmp_path):
    records = write_records(tmp_path / "in.tfrecord", [od_api_record()])
    chain = [{"op": "tf.image.random_crop", "height": 40, "width": 40}]  # often misses both
    job_rules = config.targets.Rules(keep_empty=False, min_visibility=0.5)
    manifest = run_job(records, tmp_path / "out", chain, copies=12, format="png",
                       target_rules=job_rules)
    assert_accounted(manifest)
    counted = manifest["targets"]
    rows = read_od_api(tmp_path / "out")
    assert len(rows) == 13 - counted["copies_dropped"] and 0 < counted["copies_dropped"] < 12
    assert all(len(r["image/object/class/label"]) > 0 for r in rows)
    assert counted["objects_kept"] + counted["objects_dropped"] == 24


def test_segmentation_records_keep_their_classes(tmp_path):
    out = tmp_path / "out"
    job = config.load(os.path.join(ROOT, "sample_configs", "segmentation.yaml"), overrides={
        "input": (os.path.join(ROOT, "sample_data", "detection", "segmentation.tfrecord"),),
        "output": str(out)})
    manifest = run.run_expand(dataclasses.replace(job, copies=3))
    assert_accounted(manifest)
    spec = {"image/encoded": tf.io.FixedLenFeature((), tf.string),
            "image/segmentation/class/encoded": tf.io.FixedLenFeature((), tf.string),
            "augment/copy_index": tf.io.FixedLenFeature((), tf.int64)}
    files = sorted(p.path for p in os.scandir(out) if p.name.endswith(".tfrecord"))
    records = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files)]
    assert len(records) == 16
    for parsed in records:
        image = tf.io.decode_image(parsed["image/encoded"]).numpy()
        mask = np.asarray(Image.open(io.BytesIO(parsed["image/segmentation/class/encoded"]
                                                .numpy())))
        assert mask.shape == image.shape[:2]
        assert set(np.unique(mask)) <= set(range(12)) | {255}  # never a blended value
        if int(parsed["augment/copy_index"]):
            assert (mask > 0).any()


def test_the_detection_sample_config_runs_as_the_readme_says(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "det"
    result = CliRunner().invoke(main, ["expand", "--config", "sample_configs/detection.yaml",
                                       "--output", str(out), "--copies", "2"])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(main, ["inspect", str(out), "--verify"])
    assert report.exit_code == 0, report.output
    assert "objects (image/object/*)" in report.output and "cup" in report.output
    assert "verify: OK" in report.output


def test_preview_draws_the_boxes_and_masks(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    sheet = tmp_path / "look.png"
    result = CliRunner().invoke(main, ["preview", "-c", "sample_configs/detection.yaml",
                                       "-n", "2", "--copies", "2", "-o", str(sheet)])
    assert result.exit_code == 0, result.output
    pixels = np.asarray(Image.open(sheet).convert("RGB")).reshape(-1, 3)
    from pipeline.preview import COLOURS
    outlined = sum(int((pixels == colour).all(1).sum()) for colour in COLOURS)
    assert outlined > 100  # box outlines in their class colours


def test_validate_checks_the_chain_against_the_inputs_targets(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    good = CliRunner().invoke(main, ["validate", "sample_configs/detection.yaml"])
    assert good.exit_code == 0, good.output
    assert "targets (boxes, instance masks): every op carries them" in good.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: sample_data/detection/objects.tfrecord\naugment:\n  chain:\n"
                   "    - {op: keras.layers.RandomRotation, factor: 0.1}\n")
    refused = CliRunner().invoke(main, ["validate", str(bad)])
    assert refused.exit_code == 2 and "augment.chain[0].op" in refused.output
    assert "valid" not in refused.stdout, refused.stdout  # refused, not called valid first
    listed = CliRunner().invoke(main, ["list-ops", "--family", "tf.image"]).output
    assert "tf.image.rot90  [tf.image, fixed, moves targets]" in listed
    assert "tf.image.random_hue  [tf.image, random, targets unchanged]" in listed
