"""`augbatch inspect`: on expand's output, on the sample TFRecords, on foreign and broken files."""
import glob
import os
import shutil

import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

import cli
from pipeline import inspection
from tests.conftest import SAMPLE_IMAGES, SAMPLE_TFRECORDS, copy_sample_photos, run_job

CHAIN = [{"op": "tf.image.random_flip_left_right"},
         {"op": "tf.image.random_brightness", "max_delta": 0.2}]


@pytest.fixture(scope="module")
def expanded(tmp_path_factory):
    """expand's output for 2 photos per class plus one broken file: (folder, manifest)."""
    root = tmp_path_factory.mktemp("inspect")
    images = root / "images"
    copy_sample_photos(images, per_class=2)
    (images / "objects" / "broken.jpg").write_bytes(b"not a JPEG at all")
    out = root / "out"
    manifest = run_job(str(images), out, CHAIN, copies=2, num_shards=2, seed=1)
    return out, manifest


def invoke(*args):
    return CliRunner().invoke(cli.main, ["inspect", *map(str, args)])


def test_our_output_counts_and_verifies(expanded):
    out, manifest = expanded
    result = invoke(out, "--verify")
    assert result.exit_code == 0, result.output
    text = result.stdout
    shards = manifest["output"]["shards"]
    assert f"{out}: 2 files, 18 records" in text  # 6 good inputs x (original + 2 copies)
    assert f"config {manifest['config_hash']}, seed 1" in text
    for shard in shards:
        assert f"  {shard} {manifest['counts']['per_shard'][shard]:>8}" in text
    for label, name in enumerate(["objects", "portraits", "textures"]):
        assert f"  {f'{label} {name}':<24}{6:>8}  (33.3%)" in text
    for copy in ("0 (original)", "1", "2"):
        assert f"  {copy:<24}{6:>8}  (33.3%)" in text
    assert "  formats: jpeg 18" in text
    assert "errors.jsonl: 1 input failed" in text
    assert "e.g. objects/broken.jpg: " in text
    assert "manifest: 7 inputs = 6 written + 1 errored; 18 records listed, 18 found" in text
    assert "verify: OK, all 18 records parse and their images decode" in text


def test_verify_catches_a_missing_shard(expanded, tmp_path):
    out, manifest = expanded
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    missing = manifest["output"]["shards"][0]
    os.remove(copy / missing)
    result = invoke(copy, "--verify")
    assert result.exit_code == 1
    assert f"{missing}: listed in manifest.json but missing" in result.stderr


def test_sample_tfrecords_without_manifest():
    result = invoke(SAMPLE_TFRECORDS, "--verify")
    assert result.exit_code == 0, result.output
    photos = sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*", "*")))
    assert f"2 files, {len(photos)} records" in result.stdout
    for label, name in enumerate(sorted(os.listdir(SAMPLE_IMAGES))):
        n = len(os.listdir(os.path.join(SAMPLE_IMAGES, name)))
        assert f"  {f'{label} {name}':<24}{n:>8}" in result.stdout
    pil_names = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png"}
    formats = [pil_names[Image.open(p).format] for p in photos]
    assert f"png {formats.count('png')}" in result.stdout
    assert f"jpeg {formats.count('jpeg')}" in result.stdout
    assert "copies" not in result.stdout and "manifest" not in result.stdout
    assert "image/filename" in result.stdout  # the features are listed


def _example(**features):
    feature = {}
    for key, value in features.items():
        feature[key] = (tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
                        if isinstance(value, int) else
                        tf.train.Feature(bytes_list=tf.train.BytesList(value=[value])))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_foreign_keys_and_broken_records(tmp_path):
    good = open(sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*", "*.jpg")))[0], "rb").read()
    path = tmp_path / "mixed.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(_example(img=good, lbl=4))
        writer.write(_example(img=b"garbage", lbl=4))
        writer.write(_example(img=good[:len(good) // 3], lbl=5))  # a JPEG cut short
        writer.write(b"not an Example at all \xff\xfe")
    result = invoke(path, "--image-key", "img", "--label-key", "lbl")
    assert result.exit_code == 0  # without --verify: a description, and a warning
    assert "labels (lbl):" in result.stdout and "images (img):" in result.stdout
    assert "warning: " in result.stderr

    result = invoke(path, "--image-key", "img", "--label-key", "lbl", "--verify")
    assert result.exit_code == 1
    problems = result.stderr
    assert "verify: FAILED" in problems
    assert "mixed.tfrecord record 1: 'img' is not a readable image" in problems
    assert "mixed.tfrecord record 2: image does not decode" in problems
    assert "mixed.tfrecord record 3: not a tf.train.Example" in problems
    assert "record 0" not in problems


def test_damaged_file_names_the_record(expanded, tmp_path):
    out, manifest = expanded
    shard = manifest["output"]["shards"][0]
    data = open(out / shard, "rb").read()
    cut = tmp_path / shard
    cut.write_bytes(data[:len(data) - 10])
    records = manifest["counts"]["per_shard"][shard]
    result = invoke(cut, "--verify")
    assert result.exit_code == 1
    assert f"{shard} record {records - 1}: damaged file: " in result.stderr
    assert f"the {records - 1} records before it were read" in result.stderr


def test_sheet_is_a_seeded_sample(expanded, tmp_path):
    out, _ = expanded

    def sampled(seed):
        report = inspection.scan(str(out), sample=5, seed=seed)
        return [(s.shard, s.index) for s in report.sample]
    assert sampled(3) == sampled(3) and len(sampled(3)) == 5
    assert any(sampled(seed) != sampled(3) for seed in (4, 5, 6))

    sheet = tmp_path / "sheet.png"
    result = invoke(out, "--sheet", sheet, "--sample", 5, "--seed", 3)
    assert result.exit_code == 0, result.output
    assert f"sheet: {sheet} (5 images)" in result.stdout
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 5 * 100


def test_missing_target_is_a_user_error(tmp_path):
    result = invoke(tmp_path / "nothing")
    assert result.exit_code == 2
    assert "no such file or folder" in result.stderr and "hint: " in result.stderr
