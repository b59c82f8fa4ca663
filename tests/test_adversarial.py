"""What a hostile or careless user can throw at augbatch, one class of input per test, each on
real files (a FIFO, a name that is not UTF-8, a second process holding the lock, a full file
system...): the exit code, the message, that nothing outside the contract is deleted, and that
every input found is written or errored."""
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipeline import config, run, sources
from pipeline.errors import ConfigError
from tests.conftest import (SAMPLE_IMAGES, SAMPLE_TFRECORDS, assert_accounted, read_outputs,
                            shard_bytes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def png(seed, size=8):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
                    ).save(buffer, "PNG")
    return buffer.getvalue()


def make_images(folder, classes):
    """{class: number of images} -> class folders of small PNGs; returns the folder."""
    for name, count in classes.items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(count):
            with open(os.path.join(folder, name, f"{name}_{i}.png"), "wb") as f:
                f.write(png(hash((name, i)) % 1000))
    return str(folder)


def expand(inputs, output, overwrite=False, **overrides):
    job = config.load(None, overrides={"input": (str(inputs),), "output": str(output),
                                       "copies": 0, **overrides})
    return run.run_expand(job, overwrite=overwrite)


def snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


# --- 1. --overwrite deletes only what an earlier run wrote ------------------------------------

def test_overwrite_refuses_files_no_earlier_run_wrote(tmp_path):
    images = make_images(tmp_path / "images", {"cat": 1})
    out = tmp_path / "out"
    os.makedirs(out / ".augbatch-tmp")
    names = ["augmented-2023-final.tfrecord.bak", "augmented-v1.tfrecords",
             "augmented-notes.tfrecord.txt", ".augbatch-tmp/keep.txt", "manifest.json",
             "errors.jsonl"]
    for name in names:
        (out / name).write_text(f"the user's own {name}\n")
    before = snapshot(out)
    result = invoke("expand", "-i", images, "-o", out, "--overwrite", "--plain-copies")
    assert result.exit_code == 2, result.output
    assert (f"error: --overwrite refused: {out} holds 6 files augbatch did not write: "
            ".augbatch-tmp/keep.txt, augmented-2023-final.tfrecord.bak, "
            "augmented-notes.tfrecord.txt, augmented-v1.tfrecords, errors.jsonl, ...") \
        in result.stderr
    assert snapshot(out) == before


def test_overwrite_replaces_what_the_earlier_manifest_lists(tmp_path):
    images = make_images(tmp_path / "images", {"cat": 2, "dog": 1})
    out = tmp_path / "out"
    first = expand(images, out, num_shards=3)
    assert sorted(os.listdir(out)) == [f"augmented-0000{i}-of-00003.tfrecord"
                                       for i in range(3)] + ["errors.jsonl", "manifest.json"]
    again = expand(images, out, overwrite=True, num_shards=1)
    assert sorted(os.listdir(out)) == ["augmented-00000-of-00001.tfrecord", "errors.jsonl",
                                       "manifest.json"]
    assert again["counts"]["written"] == first["counts"]["written"] == 3
    assert_accounted(again)


# --- 2. file names that are not UTF-8 ---------------------------------------------------------

def test_a_name_that_is_not_utf8_keeps_its_bytes_escaped(tmp_path):
    root = tmp_path / "images"
    os.makedirs(root / "cat")
    folder = os.fsencode(root / "cat")
    with open(os.path.join(folder, b"caf\xe9.png"), "wb") as f:  # Latin-1, as unzipped
        f.write(png(1))
    with open(os.path.join(folder, b"d\xe9faut.jpg"), "wb") as f:
        f.write(b"not an image")
    summer = os.path.join(os.fsencode(root), b"\xe9t\xe9")  # a class folder's name too
    os.makedirs(summer)
    with open(os.path.join(summer, b"sun.png"), "wb") as f:
        f.write(png(2))
    out = tmp_path / "out"
    manifest = expand(root, out, copies=1, plain_copies=True)
    rows = read_outputs(out)
    assert {(r["source_id"], r["copy_index"], r["image/class/text"].decode()) for r in rows} == {
        ("cat/caf\\xe9.png", 0, "cat"), ("cat/caf\\xe9.png", 1, "cat"),
        ("\\xe9t\\xe9/sun.png", 0, "\\xe9t\\xe9"), ("\\xe9t\\xe9/sun.png", 1, "\\xe9t\\xe9")}
    assert manifest["input"]["label_map"] == {"\\xe9t\\xe9": 0, "cat": 1}
    with open(out / "errors.jsonl", encoding="utf-8") as f:  # valid UTF-8, one record
        errors = [json.loads(line) for line in f]
    assert [(e["key"], e["reason"]) for e in errors] == [("cat/d\\xe9faut.jpg", "not an image")]
    assert errors[0]["source"] == f"{root}/cat/d\\xe9faut.jpg"
    assert sorted(os.listdir(out)) == ["augmented-00000-of-00001.tfrecord", "errors.jsonl",
                                       "manifest.json"]  # complete: nothing left in temp
    assert (manifest["counts"]["written"], manifest["counts"]["errored"]) == (2, 1)
    assert_accounted(manifest)


# --- 3. labels: every class folder counts, or an explicit label map ---------------------------

def test_every_class_folder_counts_as_in_keras(tmp_path):
    root = tmp_path / "images"
    make_images(root, {"bird": 1, "cat": 1})
    os.makedirs(root / "aaa_empty")
    os.makedirs(root / "notes")
    (root / "notes" / "readme.txt").write_text("only notes here\n")
    keras_names = tf.keras.utils.image_dataset_from_directory(
        str(root), image_size=(8, 8), batch_size=1).class_names
    assert keras_names == ["aaa_empty", "bird", "cat", "notes"]

    manifest = expand(root, tmp_path / "out")
    assert manifest["input"]["label_names"] == keras_names
    labels = {r["source_id"]: int(r["image/class/label"]) for r in read_outputs(tmp_path / "out")}
    assert labels == {"bird/bird_0.png": 1, "cat/cat_0.png": 2}
    assert manifest["counts"]["per_label"] == {"bird": 1, "cat": 1}
    assert_accounted(manifest)  # notes/readme.txt: an error record (unsupported format)


def test_an_explicit_label_map_is_used_and_written_to_the_manifest(tmp_path):
    root = make_images(tmp_path / "images", {"bird": 1, "cat": 1})
    cfg = tmp_path / "job.yaml"
    cfg.write_text("input:\n  labels: {cat: 7, bird: 3}\n")
    job = config.load(str(cfg), overrides={"input": (root,), "output": str(tmp_path / "out"),
                                           "copies": 0})
    manifest = run.run_expand(job)
    assert manifest["input"]["label_map"] == {"bird": 3, "cat": 7}
    assert {r["source_id"]: int(r["image/class/label"])
            for r in read_outputs(tmp_path / "out")} == {"bird/bird_0.png": 3, "cat/cat_0.png": 7}
    os.makedirs(os.path.join(root, "dog"))  # a class the map does not know
    result = invoke("expand", "-c", cfg, "-i", root, "-o", tmp_path / "out2", "--copies", "0")
    assert result.exit_code == 2
    assert "error: class folder 'dog' not in the config's input.labels" in result.stderr
    assert not (tmp_path / "out2").exists()


# --- 4. one run at a time per output folder ---------------------------------------------------

HOLDER = """
import os, sys, time
from pipeline import run
lock = run.OutputLock(sys.argv[1])
lock.acquire()
lock.write({"run_id": "holder", "pid": os.getpid(), "host": "here", "started": "then",
            "prefix": "augmented", "num_shards": 2, "compression": "none"})
# As if it died after committing a shard, with buckets in its temporary folder.
open(os.path.join(sys.argv[1], "augmented-00001-of-00002.tfrecord"), "wb").close()
os.makedirs(os.path.join(sys.argv[1], ".augbatch-tmp"))
open(os.path.join(sys.argv[1], ".augbatch-tmp", "bucket-00000-0-" + "ab" * 16), "wb").close()
print("locked", flush=True)
time.sleep(300)
"""


def test_a_second_run_is_refused_while_one_writes_and_a_dead_ones_lock_is_taken_over(
        tmp_path, caplog):
    images = make_images(tmp_path / "images", {"cat": 2})
    out = tmp_path / "out"
    os.makedirs(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(out)
        result = invoke("expand", "-i", images, "-o", out, "--overwrite", "--plain-copies")
        assert result.exit_code == 2, result.output
        assert (f"error: another augbatch run is writing to {out}: run holder (process "
                f"{holder.pid} on here, started then)") in result.stderr
        assert snapshot(out) == before
    finally:
        holder.kill()  # a crash: the kernel drops its lock, the lock file stays
        holder.wait()
    assert (out / ".augbatch.lock").exists()

    result = invoke("expand", "-i", images, "-o", out, "--plain-copies")  # the dead run's files are still there
    assert result.exit_code == 2 and "is not empty (2 files)" in result.stderr
    manifest = expand(images, out, overwrite=True)  # its exact shard names and temp files go
    assert "run holder (process" in caplog.text and "did not finish" in caplog.text
    assert sorted(os.listdir(out)) == ["augmented-00000-of-00001.tfrecord", "errors.jsonl",
                                       "manifest.json"]  # the lock went with the run
    assert_accounted(manifest)


# --- 5. an empty --input, 15. every option checked before the run -----------------------------

@pytest.mark.parametrize("args, message", [
    (["--input", ""], "error: --input: expected a path, a glob or a list of them, got ['']"),
    (["--seed", str(2**63)], "error: --seed: must be between -9223372036854775808 and "
                             "9223372036854775807, got 9223372036854775808"),
    (["--num-shards", "100003"], "error: --num-shards: must be between 0 and 100000"),
    (["--max-error-rate", "nan"], "error: --max-error-rate: expected a number between 0 and 1"),
])
def test_options_are_checked_before_anything_runs(tmp_path, args, message):
    images = make_images(tmp_path / "images", {"cat": 1})
    base = ["expand", "--plain-copies", "-o", tmp_path / "out"] + ([] if "--input" in args else ["-i", images])
    result = invoke(*base, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("output:\n  prefix: '" + "p" * 300 + "'\n", "output.prefix: a file name prefix has at most "
                                                 "200 bytes and no control characters"),
    ('output:\n  prefix: "a\\0b"\n', "output.prefix: a file name prefix has at most"),
    ("input:\n  channels: '3'\n", "input.channels: expected one of 1, 3, got '3'"),
    ("augment:\n  chain:\n    - {op: tf.image.random_brightness, max_delta: .nan}\n",
     "augment.chain[0].max_delta: nan is not a finite number"),
    ("augment:\n  chain:\n    - {op: tf.image.random_contrast, lower: 0.5, upper: .inf}\n",
     "augment.chain[0].upper: inf is not a finite number"),
    ("errors:\n  max_error_rate: .nan\n", "errors.max_error_rate: nan is not a finite number"),
])
def test_config_values_that_would_fail_late_or_silently_are_refused(tmp_path, text, message):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(text)
    result = invoke("validate", cfg)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr


def test_non_finite_numbers_are_refused_in_json_and_through_the_api(tmp_path):
    cfg = tmp_path / "job.json"
    cfg.write_text('{"augment": {"chain": [{"op": "tf.image.random_hue", "max_delta": NaN}]}}')
    result = invoke("validate", cfg)
    assert result.exit_code == 2
    assert "augment.chain[0].max_delta: nan is not a finite number" in result.stderr
    with pytest.raises(ConfigError, match="inf is not a finite number"):
        config.chain_mod.normalize([{"op": "tf.image.random_brightness",
                                     "max_delta": float("inf")}])


def test_a_binary_config_file_is_a_config_error(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    result = invoke("validate", cfg)
    assert result.exit_code == 2
    assert f"error: {cfg} is not a text file (not UTF-8 at byte 0)" in result.stderr


# --- 6. an output folder inside the input -----------------------------------------------------

def test_an_output_folder_inside_the_input_is_never_read(tmp_path):
    records = tmp_path / "records"
    shutil.copytree(SAMPLE_TFRECORDS, records)
    out = records / "out"
    first = expand(records, out)
    again = expand(records, out, overwrite=True)
    assert again["counts"] == first["counts"]
    assert again["input"]["kind"] == "tfrecord"
    images = make_images(tmp_path / "images", {"cat": 1})
    expand(images, os.path.join(images, "out"))
    manifest = expand(images, os.path.join(images, "out"), overwrite=True)
    assert manifest["input"]["label_names"] == ["cat"]  # not a class named 'out'
    assert_accounted(manifest)
    result = invoke("expand", "-i", out, "-o", records, "--plain-copies")
    assert result.exit_code == 2 and f"--input {out} is the output folder" in result.stderr


# --- 7, 8. configs that would take all memory or time -----------------------------------------

BOMB = """\
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
augment:
  chain:
    - {op: tf.image.random_brightness, max_delta: *h}
"""


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BOMB)  # ~600 bytes standing for 9**8 = 43 million values
    started = time.time()
    result = invoke("validate", cfg)
    assert result.exit_code == 2
    assert "the config expands to more than 100000 values (YAML aliases" in result.stderr
    assert time.time() - started < 10 and len(result.output) < 1000
    cfg.write_text("augment: &a\n  chain: [*a]\n")  # a value inside itself
    result = invoke("validate", cfg)
    assert result.exit_code == 2 and "contains itself" in result.stderr


def nested_one_of(depth):
    step = {"op": "tf.image.random_flip_left_right"}
    for _ in range(depth):
        step = {"one_of": [step, {"op": "tf.image.random_flip_up_down"}]}
    return step


@pytest.mark.parametrize("depth, message", [
    (9, "groups (one_of, some_of, sequence) nested more than 8 levels deep"),
    (250, "nested more than 64 levels deep"),
])
def test_deeply_nested_groups_are_refused_with_a_message(tmp_path, depth, message):
    cfg = tmp_path / "deep.json"
    cfg.write_text(json.dumps({"augment": {"chain": [nested_one_of(depth)]}}))
    result = invoke("validate", cfg)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    cfg.write_text(json.dumps({"augment": {"chain": [nested_one_of(8)]}}))
    assert invoke("validate", cfg).exit_code == 0
    cfg.write_text(json.dumps({"augment": {"chain": ["tf.image.random_flip_up_down"] * 201}}))
    result = invoke("validate", cfg)
    assert result.exit_code == 2 and "a chain has at most 200 ops" in result.stderr


# --- 9. only regular files, never more than an image can take ---------------------------------

def test_fifos_devices_and_huge_files_are_errors_not_hangs(tmp_path):
    root = tmp_path / "images"
    make_images(root, {"cat": 1})
    os.mkfifo(root / "cat" / "pipe.jpg")  # opening it would block forever
    os.symlink("/dev/zero", root / "cat" / "zero.jpg")  # reading it would never end
    with open(root / "cat" / "huge.png", "wb") as f:  # larger than max_pixels allows
        f.write(png(2)[:64] + b"\0" * (sources.max_file_bytes(100) + 1))
    manifest = expand(root, tmp_path / "out", max_pixels=100)
    with open(tmp_path / "out" / "errors.jsonl") as f:
        errors = {e["key"]: e for e in map(json.loads, f)}
    assert {k: e["reason"] for k, e in errors.items()} == {
        "cat/pipe.jpg": "not a regular file", "cat/zero.jpg": "not a regular file",
        "cat/huge.png": "file too large"}
    assert "is a named pipe (FIFO), not a regular file" in errors["cat/pipe.jpg"]["message"]
    assert "is a device" in errors["cat/zero.jpg"]["message"]
    assert (manifest["counts"]["written"], manifest["counts"]["errored"]) == (1, 3)
    assert_accounted(manifest)



def test_a_file_is_read_whole_up_to_the_limit_and_refused_unread_past_it(tmp_path):
    """read_bytes reads what a file holds (not a buffer of the limit's size) and refuses a
    file past the limit by its size, before reading it."""
    limit = 100_000
    for size in (0, 1, 4096, limit - 1, limit):
        path = tmp_path / f"file-{size}"
        data = os.urandom(size)
        path.write_bytes(data)
        assert sources.read_bytes(str(path), limit) == data
        assert sources.read_bytes(str(path)) == data
    over = tmp_path / "over"
    over.write_bytes(b"\0" * (limit + 1))
    with pytest.raises(sources.Refused, match=f"is over {limit} bytes"):
        sources.read_bytes(str(over), limit)
    assert len(sources.read_bytes(str(over))) == limit + 1  # (no limit: all of it)

# --- 11. other formats: decoded, or one error each --------------------------------------------

def test_webp_and_tiff_are_decoded_and_other_files_are_unsupported(tmp_path):
    root = tmp_path / "images"
    os.makedirs(root)
    pixels = np.random.default_rng(3).integers(0, 256, (8, 8, 3), np.uint8)
    Image.fromarray(pixels).save(root / "a.webp", lossless=True)
    Image.fromarray(pixels).save(root / "b.tif")
    (root / "c.heic").write_bytes(b"\0\0\0\x18ftypheic")
    manifest = expand(root, tmp_path / "out", format="png")
    rows = {r["source_id"]: r["image"] for r in read_outputs(tmp_path / "out")}
    assert sorted(rows) == ["a.webp", "b.tif"]
    for image in rows.values():
        np.testing.assert_array_equal(image, pixels)
    with open(tmp_path / "out" / "errors.jsonl") as f:
        errors = [json.loads(line) for line in f]
    assert [(e["key"], e["stage"], e["reason"]) for e in errors] == [
        ("c.heic", "read", "unsupported format")]
    assert manifest["errors_by_reason"] == [{"stage": "read", "reason": "unsupported format",
                                             "count": 1}]
    assert_accounted(manifest)


# --- 12. empty inputs and runs that write nothing are loud ------------------------------------

def test_an_empty_tfrecord_is_an_error_and_writing_nothing_fails_the_run(tmp_path):
    records = tmp_path / "records"
    shutil.copytree(SAMPLE_TFRECORDS, records)
    (records / "empty.tfrecord").write_bytes(b"")
    manifest = expand(records, tmp_path / "out")
    with open(tmp_path / "out" / "errors.jsonl") as f:
        errors = [json.loads(line) for line in f]
    assert [(e["key"], e["reason"]) for e in errors] == [("empty.tfrecord:0",
                                                          "empty TFRecord file")]
    assert_accounted(manifest)

    only = tmp_path / "only"
    os.makedirs(only)
    (only / "empty.tfrecord").write_bytes(b"")
    result = invoke("-q", "expand", "-i", only, "-o", tmp_path / "out2", "--plain-copies")
    assert result.exit_code == 3, result.output
    assert "error: nothing was written: the one input failed" in result.stderr
    assert "1 x empty TFRecord file (read)" in result.stderr
    written = json.load(open(tmp_path / "out2" / "manifest.json"))
    assert (written["counts"]["discovered"], written["counts"]["errored"]) == (1, 1)


# --- 13. negative labels, 14. one file under two keys -----------------------------------------

def test_negative_labels_are_counted_as_themselves(tmp_path):
    records = tmp_path / "records"
    os.makedirs(records)

    def record(label):
        return tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png(abs(label))])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
        })).SerializeToString()
    (records / "labels.tfrecord").write_bytes(b"".join(
        sources.frame_record(record(label)) for label in (-1, -5, 2)))
    manifest = expand(records, tmp_path / "out")
    assert manifest["counts"]["per_label"] == {"-1": 1, "-5": 1, "2": 1}
    assert sorted(int(r["image/class/label"]) for r in read_outputs(tmp_path / "out")) == [
        -5, -1, 2]


def test_a_folder_linked_twice_is_counted_by_real_path(tmp_path, caplog):
    store = make_images(tmp_path / "store", {"cats": 2})
    root = tmp_path / "images"
    os.makedirs(root)
    os.symlink(os.path.join(store, "cats"), root / "cats")
    os.symlink(os.path.join(store, "cats"), root / "kittens")
    manifest = expand(root, tmp_path / "out")
    assert manifest["input"]["same_file_under_several_keys"] == [
        ["cats/cats_0.png", "kittens/cats_0.png"], ["cats/cats_1.png", "kittens/cats_1.png"]]
    assert "2 inputs are the same file as another input" in caplog.text
    assert manifest["counts"]["written"] == 4
    assert_accounted(manifest)


# --- 16. SIGTERM and a full disk: their own message and exit code, no temporary file ----------

def photos(folder):
    shutil.copytree(SAMPLE_IMAGES, folder)  # 36 photos: seconds of work to interrupt
    return str(folder)


def cli_process(*args):
    return subprocess.Popen([sys.executable, "-m", "cli", "-q", "expand", "--plain-copies",
                             *map(str, args)],
                            cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                            stderr=subprocess.PIPE, text=True)


def wait_for(process, folder, prefix, suffix=""):
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if folder.is_dir() and any(n.startswith(prefix) and n.endswith(suffix)
                                   for n in os.listdir(folder)):
            return
        time.sleep(0.005)


def test_ctrl_c_stops_the_run_and_says_what_was_kept(tmp_path):
    images, out = photos(tmp_path / "images"), tmp_path / "new" / "out"
    process = cli_process("-i", images, "-o", out, "--copies", "3", "--format", "png")
    wait_for(process, out / ".augbatch-tmp", "bucket-")  # augmenting, nothing committed yet
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "error: stopped by Ctrl-C: " in stderr and "Traceback" not in stderr
    if "nothing of this run was kept" in stderr:
        assert (f"nothing of this run was kept in {out} (its temporary files were deleted); "
                "run the same command again to start over") in stderr
        assert not (tmp_path / "new").exists()  # the run made both folders: it leaves neither
    else:  # the first bundle was committed before the signal arrived
        assert "inputs is kept in" in stderr and os.listdir(out) == [".augbatch-tmp"]


def test_sigterm_keeps_committed_work_and_resume_gives_the_clean_bytes(tmp_path, caplog):
    images, out = photos(tmp_path / "images"), tmp_path / "out"
    process = cli_process("-i", images, "-o", out, "--copies", "3", "--format", "png",
                          "--num-shards", "2", "--", "--direct_num_workers=2",
                          "--direct_running_mode=multi_threading")
    wait_for(process, out / ".augbatch-tmp", "done-", ".json")  # a bundle committed
    process.send_signal(signal.SIGSTOP)  # frozen there: the signal lands right after
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGTERM, stderr
    # (the other worker thread's batches after the stop are dropped, not errors of their own)
    assert "cannot schedule new futures" not in stderr, stderr
    match = re.search(r"error: stopped by SIGTERM: the work of (\d+) inputs is kept in "
                      r"(\S+): run the same command with --resume to go on from it", stderr)
    assert match and match.group(2) == str(out / ".augbatch-tmp"), stderr
    kept = int(match.group(1))
    assert 1 <= kept <= 36 and os.listdir(out) == [".augbatch-tmp"]

    def job(output):
        return config.load(None, overrides={"input": (images,), "output": str(output),
                                            "copies": 3, "format": "png", "num_shards": 2,
                                            "plain_copies": True})
    caplog.set_level("INFO", logger="augbatch")
    resumed = run.run_expand(job(out), resume=True)
    assert f"resuming: the {kept} inputs the interrupted run finished are reused" in caplog.text
    clean = run.run_expand(job(tmp_path / "clean"))
    assert shard_bytes(out) == shard_bytes(tmp_path / "clean")
    assert (open(out / "errors.jsonl", "rb").read()
            == open(tmp_path / "clean" / "errors.jsonl", "rb").read())
    assert resumed["counts"] == clean["counts"] and resumed["counts"]["written"] == 36
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "clean"))
    assert_accounted(resumed)

    # Another config cannot resume it: refused, the kept work untouched.
    process = cli_process("-i", images, "-o", tmp_path / "other", "--copies", "1")
    wait_for(process, tmp_path / "other" / ".augbatch-tmp", "done-", ".json")
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    process.communicate(timeout=120)
    if (tmp_path / "other").exists():  # kept (else the run ended before the signal)
        before = snapshot(tmp_path / "other")
        result = invoke("expand", "-i", images, "-o", tmp_path / "other", "--copies", "2",
                        "--resume", "--plain-copies")
        assert result.exit_code == 2
        assert "--resume: the interrupted run in" in result.stderr
        assert "differs from this one in config_hash" in result.stderr
        assert snapshot(tmp_path / "other") == before


def test_a_full_disk_is_a_clear_error_and_leaves_no_temporary_file(tmp_path):
    """The output is a 64 KB tmpfs mounted in a private mount namespace of the run (root or an
    unprivileged user namespace), so nothing is mounted on the machine."""
    images, out = photos(tmp_path / "images"), tmp_path / "small"
    os.makedirs(out)
    unshare = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "-rm"]
    script = ('mount -t tmpfs -o size=64k tmpfs "$1" || exit 99; shift; "$@"; code=$?; '
              'cd "$OUT" && find . | sort; exit $code')
    result = subprocess.run(
        unshare + ["sh", "-c", script, "sh", str(out), sys.executable, "-m", "cli", "-q",
                   "expand", "-i", images, "-o", str(out / "run"), "--copies", "2",
                   "--format", "png", "--plain-copies"],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OUT=str(out)),
        capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert f"error: no space left on the device while writing {out / 'run'}" in result.stderr
    assert "hint: free some space or choose another --output" in result.stderr
    assert result.stdout.split() == ["."]  # no temporary file, no lock, no folder left


# --- 17. nothing left in the system's temp folder ---------------------------------------------

def test_a_run_leaves_nothing_in_the_temp_folder(tmp_path):
    images = make_images(tmp_path / "images", {"cat": 1})
    temp = tmp_path / "temp"
    os.makedirs(temp)
    result = subprocess.run([sys.executable, "-m", "cli", "-q", "expand", "-i", images, "-o",
                             str(tmp_path / "out"), "--copies", "1", "--plain-copies"],
                            cwd=ROOT,
                            env=dict(os.environ, TMPDIR=str(temp), TF_CPP_MIN_LOG_LEVEL="3"),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.listdir(temp) == []
