"""Bad inputs, each made for real in a temporary folder and run through a real pipeline among
good images. Each unusable one gives exactly one error record (its stage and reason asserted);
the odd-but-valid ones (CMYK, 16-bit, RGBA, gray, palette, animated, tiny, non-ASCII names) are
converted and written; every good input of the same run is written.

Two runs keep this fast: one folder holding every kind of bad image file, one folder of
TFRecord files holding every kind of bad record.
"""
import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import augment, run, sources
from tests.conftest import (SAMPLE_IMAGES, assert_accounted, make_job, read_outputs,
                            run_job)

CHAIN = [{"op": "tf.image.random_flip_left_right"},
         {"op": "tf.image.random_crop", "height": 2, "width": 2}]


def noise(height, width, channels=3, seed=0):
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def encoded(array, fmt, mode=None, **options):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width, height):
    """A PNG whose header declares width x height (RGB) with almost no pixel data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def sample_photo(name):
    for class_dir in sorted(os.listdir(SAMPLE_IMAGES)):
        path = os.path.join(SAMPLE_IMAGES, class_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(name)


# --- one folder with every kind of image file -------------------------------------------------

@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_folder")
    root = base / "images"
    good, odd, bad = root / "good", root / "odd", root / "bad"
    for folder in (good, odd, bad):
        os.makedirs(folder)
    # Good photos, two of them with spaces and non-ASCII characters in their names.
    shutil.copy(sample_photo("coffee_01.jpg"), good / "coffee_01.jpg")
    shutil.copy(sample_photo("brick_01.jpg"), good / "ein Bild über Ziegel.jpg")
    shutil.copy(sample_photo("grass_04.png"), good / "草 1.png")

    # Odd but valid: converted to RGB and written.
    frames = [Image.fromarray(noise(24, 24, seed=s)) for s in range(3)]
    frames[0].save(odd / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    Image.fromarray(noise(24, 24, seed=4)).convert("CMYK").save(odd / "cmyk.jpg", "JPEG",
                                                               quality=95)
    sixteen = np.random.default_rng(5).integers(0, 65536, (24, 24)).astype(np.uint16)
    Image.fromarray(sixteen).save(odd / "sixteen_bit.png")
    Image.fromarray(noise(24, 24, 4, seed=6), "RGBA").save(odd / "rgba.png")
    Image.fromarray(noise(24, 24, 1, seed=7), "L").save(odd / "gray.png")
    Image.fromarray(noise(24, 24, seed=8)).convert("P").save(odd / "palette.bmp")
    Image.fromarray(noise(1, 1, seed=9)).save(bad / "one_pixel.png")  # fails the 2x2 crop

    # Unusable.
    jpeg = open(sample_photo("coffee_02.jpg"), "rb").read()
    png = open(sample_photo("astronaut_04.png"), "rb").read()
    (bad / "zero_bytes.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (bad / "truncated.png").write_bytes(png[:len(png) // 2])
    (bad / "text.jpg").write_text("this is a text file, not a JPEG\n")
    (bad / "huge.png").write_bytes(png_header_only(60000, 60000))
    # Tests run as root, where chmod 000 does not stop a read: a broken symbolic link and a
    # link to itself are files that really cannot be read.
    os.symlink(base / "gone.jpg", bad / "dangling.jpg")
    os.symlink("self_loop.jpg", bad / "self_loop.jpg")
    # A folder linking back to the input folder: listing must neither hang nor recurse.
    os.symlink(root, bad / "loop")
    (root / "stray.jpg").write_bytes(jpeg)  # beside the class folders: no label
    (good / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: left out, counted
    (good / "._coffee_01.jpg").write_bytes(b"\0\5\26\7")  # macOS resource fork, hidden

    out = base / "out"
    manifest = run_job(str(root), out, CHAIN, copies=1, seed=3, format="png")
    errors = {e["key"]: e for e in map(json.loads, open(out / "errors.jsonl"))}
    rows = read_outputs(out)
    return root, manifest, errors, rows


ERROR_CASES = [
    ("bad/zero_bytes.jpg", "decode", "empty file", "empty file (0 bytes)"),
    ("bad/truncated.jpg", "decode", "corrupt or truncated JPEG", "image file is truncated"),
    ("bad/truncated.png", "decode", "corrupt or truncated PNG", "image file is truncated"),
    ("bad/text.jpg", "decode", "not an image", "the data starts with b'this is a te'"),
    ("bad/huge.png", "validate", "too many pixels",
     "60000x60000 = 3600000000 pixels, over the limit max_pixels=50000000"),
    ("bad/dangling.jpg", "read", "broken symbolic link", "gone.jpg, which does not exist"),
    ("bad/self_loop.jpg", "read", "symbolic link loop", "points back to itself"),
    ("bad/loop", "read", "symbolic link loop", "a folder above it; not followed"),
    ("bad/one_pixel.png", "augment", None, "Need value.shape >= size"),
    ("stray.jpg", "read", "image beside the class folders", "it has no label"),
]


@pytest.mark.parametrize("key,stage,reason,message", ERROR_CASES,
                         ids=[case[0] for case in ERROR_CASES])
def test_each_bad_file_is_one_error_record(folder_run, key, stage, reason, message):
    root, _, errors, _ = folder_run
    error = errors[key]
    assert error["stage"] == stage
    if reason:
        assert error["reason"] == reason
    assert message in error["message"], error
    assert error["source"] == os.path.join(str(root), key)
    assert error["record_index"] is None
    assert error["error_type"]


def test_an_image_smaller_than_the_crop_always_fails_with_the_crops_message():
    # The crop and the record of where it went run in one TensorFlow call: an image smaller
    # than the crop once failed a third of the time on the record's "Integer division by zero".
    runner = augment.ChainRunner(make_job("x", "y", CHAIN, copies=1, seed=3))
    one_pixel = noise(1, 1)[None]
    for copy in range(60):
        with pytest.raises(tf.errors.InvalidArgumentError, match="Need value.shape >= size"):
            runner.augment_encode(one_pixel, np.array([[copy, 3]], np.int32), ["png"])


def test_every_good_and_convertible_file_is_written(folder_run):
    root, manifest, errors, rows = folder_run
    written = {row["source_id"] for row in rows}
    assert written == {"good/coffee_01.jpg", "good/ein Bild über Ziegel.jpg", "good/草 1.png",
                       "odd/animated.gif", "odd/cmyk.jpg", "odd/sixteen_bit.png",
                       "odd/rgba.png", "odd/gray.png", "odd/palette.bmp"}
    assert not written & set(errors)
    assert set(errors) == {case[0] for case in ERROR_CASES}
    counts = manifest["counts"]
    assert counts["discovered"] == len(written) + len(ERROR_CASES)
    assert counts["written"] == len(written) and counts["errored"] == len(ERROR_CASES)
    assert counts["outputs"] == 2 * len(written)  # the original + one copy each
    assert_accounted(manifest)
    assert manifest["input"]["skipped_hidden"] == ["good/.DS_Store", "good/._coffee_01.jpg"]
    assert manifest["errors_by_stage"] == {"augment": 1, "decode": 4, "read": 4, "validate": 1}
    assert sum(r["count"] for r in manifest["errors_by_reason"]) == len(ERROR_CASES)


def originals(rows):
    return {row["source_id"]: row["image"] for row in rows if row["copy_index"] == 0}


def test_odd_images_are_converted_to_rgb(folder_run):
    root, _, _, rows = folder_run
    got = originals(rows)

    def pil_rgb(name):
        with Image.open(root / "odd" / name) as im:
            return np.asarray(im.convert("RGB"))

    # CMYK JPEG: TensorFlow converts it to RGB as Pillow does, up to the two JPEG decoders'
    # rounding (inverted or misread ink would differ by ~100s).
    cmyk = np.abs(got["odd/cmyk.jpg"].astype(int) - pil_rgb("cmyk.jpg"))
    assert got["odd/cmyk.jpg"].shape == (24, 24, 3)
    assert cmyk.mean() < 2 and cmyk.max() <= 10
    # Animated GIF: the first frame.
    with Image.open(root / "odd" / "animated.gif") as gif:
        assert gif.n_frames == 3
        np.testing.assert_array_equal(got["odd/animated.gif"], np.asarray(gif.convert("RGB")))
    # 16-bit PNG: the high byte of each value, repeated to three channels.
    with Image.open(root / "odd" / "sixteen_bit.png") as im:
        high = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(got["odd/sixteen_bit.png"], np.repeat(high[..., None], 3, -1))
    # RGBA: the alpha channel is dropped.
    with Image.open(root / "odd" / "rgba.png") as im:
        np.testing.assert_array_equal(got["odd/rgba.png"], np.asarray(im)[..., :3])
    # Grayscale: repeated to three channels.
    np.testing.assert_array_equal(got["odd/gray.png"], pil_rgb("gray.png"))
    # Palette BMP: the palette is applied (TensorFlow's BMP decoder would return the indices).
    np.testing.assert_array_equal(got["odd/palette.bmp"], pil_rgb("palette.bmp"))
    assert all(image.shape[-1] == 3 for image in got.values())


def test_non_ascii_names_keep_their_key_and_label(folder_run):
    root, manifest, _, rows = folder_run
    row = next(r for r in rows if r["source_id"] == "good/草 1.png" and r["copy_index"] == 0)
    assert row["image/class/text"].decode() == "good"
    with Image.open(root / "good" / "草 1.png") as im:
        np.testing.assert_array_equal(row["image"], np.asarray(im.convert("RGB")))


def test_max_pixels_is_checked_from_the_header(tmp_path):
    """The 60000x60000 header is refused without decoding (no 10 GB allocation), and a lower
    max_pixels refuses a normal photo too."""
    images = tmp_path / "images"
    os.makedirs(images)
    (images / "huge.png").write_bytes(png_header_only(60000, 60000))
    shutil.copy(sample_photo("coffee_01.jpg"), images / "coffee_01.jpg")
    with pytest.raises(run.NothingWritten) as failed:  # nothing written: a failed run
        run_job(str(images), tmp_path / "out", copies=0, max_pixels=100)
    manifest = failed.value.manifest
    errors = [json.loads(line) for line in open(tmp_path / "out" / "errors.jsonl")]
    assert [(e["key"], e["stage"], e["reason"]) for e in errors] == [
        ("coffee_01.jpg", "validate", "too many pixels"),
        ("huge.png", "validate", "too many pixels")]
    assert "max_pixels=100" in errors[1]["message"]
    assert manifest["counts"]["written"] == 0
    assert_accounted(manifest)


# --- one folder of TFRecord files with every kind of bad record -------------------------------

def example(features):
    feature = {}
    for name, value in features.items():
        if isinstance(value, bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        elif isinstance(value, float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def good_record(seed, size=16):
    return example({"image/encoded": encoded(noise(size, size, seed=seed), "PNG"),
                    "image/class/label": seed % 3})


@pytest.fixture(scope="module")
def record_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_records")
    folder = base / "records"
    os.makedirs(folder)
    mixed = [
        good_record(0),
        example({"image/class/label": 1}),                                    # no image
        example({"image/encoded": 7, "image/class/label": 1}),                # image is an int
        example({"image/encoded": encoded(noise(8, 8), "PNG")}),              # no label
        example({"image/encoded": encoded(noise(8, 8), "PNG"),
                 "image/class/label": 1.5}),                                  # label is a float
        b"\xff" * 8,                                                          # not an Example
        example({"image/encoded": b"GIF89a but not really", "image/class/label": 2}),
        good_record(1, size=1),                                               # 1x1 is fine
        good_record(2),
    ]
    (folder / "mixed.tfrecord").write_bytes(b"".join(map(sources.frame_record, mixed)))

    framed = [sources.frame_record(good_record(10 + i)) for i in range(3)]
    flipped = bytearray(b"".join(framed))
    flipped[len(framed[0]) + 12 + 20] ^= 0xFF  # a byte inside record 1's data
    (folder / "flipped_crc.tfrecord").write_bytes(bytes(flipped))
    truncated = b"".join(framed)[:-10]  # record 2 loses its tail
    (folder / "truncated.tfrecord").write_bytes(truncated)

    out = base / "out"
    manifest = run_job(str(folder), out, [{"op": "tf.image.random_flip_up_down"}], copies=1,
                       format="png")
    errors = {e["key"]: e for e in map(json.loads, open(out / "errors.jsonl"))}
    return folder, manifest, errors, read_outputs(out), [len(f) for f in framed]


RECORD_CASES = [
    ("mixed.tfrecord:1", "decode", "no image feature", "no feature 'image/encoded'"),
    ("mixed.tfrecord:2", "decode", "image feature of the wrong type",
     "must hold one bytes value, it holds 1 int64 value"),
    ("mixed.tfrecord:3", "decode", "no label feature", "no label feature 'image/class/label'"),
    ("mixed.tfrecord:4", "decode", "label feature of the wrong type",
     "must hold one int64 value, it holds 1 float value"),
    ("mixed.tfrecord:5", "decode", "not a tf.train.Example", "not a tf.train.Example"),
    ("mixed.tfrecord:6", "decode", "not an image", "the data starts with b'GIF89a but n'"),
    ("flipped_crc.tfrecord:1", "read", "damaged TFRecord file",
     "corrupt record data (CRC mismatch) at byte offset {offset1}; record 0 before it was"),
    ("truncated.tfrecord:2", "read", "damaged TFRecord file",
     "truncated record (expected {length2} bytes) at byte offset {offset2}; records 0-1"),
]


@pytest.mark.parametrize("key,stage,reason,message", RECORD_CASES,
                         ids=[case[0] for case in RECORD_CASES])
def test_each_bad_record_is_one_error_record(record_run, key, stage, reason, message):
    folder, _, errors, _, lengths = record_run
    error = errors[key]
    assert (error["stage"], error["reason"]) == (stage, reason)
    expected = message.format(offset1=lengths[0], offset2=lengths[0] + lengths[1],
                              length2=lengths[2] - 16)
    assert expected in error["message"], error
    file_name, index = key.rsplit(":", 1)
    assert error["source"] == os.path.join(str(folder), file_name)
    assert error["record_index"] == int(index)


def test_records_before_the_damage_and_all_good_records_are_written(record_run):
    _, manifest, errors, rows, _ = record_run
    written = {row["source_id"] for row in rows}
    assert written == {"mixed.tfrecord:0", "mixed.tfrecord:7", "mixed.tfrecord:8",
                       "flipped_crc.tfrecord:0", "truncated.tfrecord:0", "truncated.tfrecord:1"}
    assert set(errors) == {case[0] for case in RECORD_CASES}
    one_pixel = [r for r in rows if r["source_id"] == "mixed.tfrecord:7"]
    assert all(r["image"].shape == (1, 1, 3) for r in one_pixel) and len(one_pixel) == 2
    # The damaged tail of a file counts as one errored input: its records are unknown.
    counts = manifest["counts"]
    assert (counts["discovered"], counts["written"], counts["errored"]) == (14, 6, 8)
    assert_accounted(manifest)
