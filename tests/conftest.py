"""Shared test helpers: the bundled sample photos, running a real job, reading outputs back."""
import glob
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from pipeline import config, run  # noqa: E402

# test_tfa_core.py compares pipeline/ops/tfa_core.py with tensorflow-addons itself, which only
# the pinned stack can install: the modern stack has nothing to compare against, so the file is
# not collected there (tfa_core's behaviour is tested on both stacks by test_tfa_core_compat.py
# and test_ops_tfa.py).
try:
    import tensorflow_addons  # noqa: F401
    collect_ignore = []
except ImportError:
    collect_ignore = ["test_tfa_core.py"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(ROOT, "sample_data", "images")
SAMPLE_TFRECORDS = os.path.join(ROOT, "sample_data", "tfrecords")
SAMPLE_CONFIGS = os.path.join(ROOT, "sample_configs")


def copy_sample_photos(out, per_class=3):
    """The first `per_class` sample photos of each class, copied into class folders in `out`."""
    for class_dir in sorted(os.listdir(SAMPLE_IMAGES)):
        files = sorted(os.listdir(os.path.join(SAMPLE_IMAGES, class_dir)))[:per_class]
        os.makedirs(os.path.join(out, class_dir))
        for name in files:
            shutil.copy(os.path.join(SAMPLE_IMAGES, class_dir, name),
                        os.path.join(out, class_dir, name))
    return str(out)


@pytest.fixture
def small_folder(tmp_path):
    """A copy of a few sample photos per class (fast end-to-end runs)."""
    return copy_sample_photos(tmp_path / "images")


def make_job(input_path, output, chain=None, **fields):
    """A Job as the CLI would build it from a config holding `chain` and `fields`."""
    overrides = {"input": (input_path,) if isinstance(input_path, str) else input_path,
                 "output": str(output), "chain": chain or []}
    overrides.update(fields)
    return config.Job(**{**overrides, "input": tuple(overrides["input"]),
                         "chain": tuple(config.chain_mod.normalize(overrides["chain"]))})


def run_job(input_path, output, chain=None, beam_args=(), **fields):
    return run.run_expand(make_job(input_path, output, chain, **fields), beam_args)


FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "image/source_id": tf.io.FixedLenFeature([], tf.string),
    "augment/copy_index": tf.io.FixedLenFeature([], tf.int64),
    "augment/seed": tf.io.FixedLenFeature([], tf.int64),
    "augment/config_hash": tf.io.FixedLenFeature([], tf.string),
}


def read_outputs(output_dir, extra_features=None):
    """Every output example read back with tf.data, decoded: a list of dicts."""
    files = sorted(glob.glob(os.path.join(output_dir, "*.tfrecord*")))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    spec = dict(FEATURES, **(extra_features or {}))
    dataset = tf.data.TFRecordDataset(files, compression_type=compression)
    out = []
    for record in dataset:
        example = tf.io.parse_single_example(record, spec)
        row = {k: v.numpy() for k, v in example.items()}
        row["image"] = tf.io.decode_image(example["image/encoded"]).numpy()
        row["source_id"] = row["image/source_id"].decode()
        row["copy_index"] = int(row["augment/copy_index"])
        out.append(row)
    return out


def shard_bytes(output_dir):
    return {os.path.basename(p): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(output_dir, "*.tfrecord*")))}


def decode_file(path, channels=3):
    return tf.io.decode_image(tf.io.read_file(path), channels=channels,
                              expand_animations=False).numpy()


def assert_accounted(manifest):
    counts = manifest["counts"]
    assert counts["discovered"] == counts["written"] + counts["errored"], counts


def real_photo(height=48, width=64):
    """One real colour sample photo, resized: float32 [1, H, W, 3] in [0, 1] for op tests."""
    path = os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg")
    image = tf.image.resize(decode_file(path)[None].astype(np.float32) / 255.0,
                            (height, width))
    return tf.clip_by_value(image, 0.0, 1.0)
