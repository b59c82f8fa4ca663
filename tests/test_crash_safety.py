"""Crash-safe, retry-safe, contained output.

- A run killed with SIGKILL part-way, then run again with --overwrite, gives exactly the bytes
  of a clean run and leaves no temporary file.
- A failed augmentation batch is retried without changing a byte. Beam 2.77's DirectRunner
  (the FnApiRunner, in all its running modes) does NOT retry a failed bundle: an exception
  escaping a DoFn fails the whole run. So the test injects a one-time failure into the batch
  step of AugmentAndEncode (AUGBATCH_FAIL_ONCE, test-only), where the DoFn retries each
  input alone; what is tested is that the retried inputs give the same bytes as the clean run.
- Nothing is written outside the output directory, whatever the input names, labels or
  features hold; a non-empty output directory is refused without --overwrite.
"""
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time

import tensorflow as tf
from click.testing import CliRunner

from cli import main
from pipeline import config, run, sources, transforms
from tests.conftest import SAMPLE_IMAGES, assert_accounted, read_outputs, shard_bytes

CONFIG = """\
augment:
  copies: 3
  seed: 5
  chain:
    - op: tf.image.random_flip_left_right
    - op: tf.image.random_brightness
      max_delta: 0.2
    - op: tf.image.random_crop_and_resize
      scale: [0.6, 1.0]
output:
  num_shards: 3
  format: png
"""


def clean_run(cfg, images, output):
    """The reference: the same config run once, undisturbed, in this process."""
    job = config.load(str(cfg), overrides={"input": (str(images),), "output": str(output)})
    return run.run_expand(job)


def all_files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


def test_killed_run_then_overwrite_gives_the_clean_bytes(tmp_path):
    images = tmp_path / "images"  # 18 photos: a few seconds of work to interrupt
    shutil.copytree(SAMPLE_IMAGES, images, ignore=lambda folder, names: [
        n for n in names if n.endswith(("_03.jpg", "_04.jpg", "_04.png"))])
    cfg = tmp_path / "job.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cli", "-q", "expand", "-c", str(cfg), "-i", str(images),
               "-o", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    tmp_dir, deadline = out / ".augbatch-tmp", time.time() + 120
    try:
        while time.time() < deadline and process.poll() is None:
            if tmp_dir.is_dir() and any(n.startswith("bucket-") for n in os.listdir(tmp_dir)):
                break
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # mid-way: augmented records half bucketed
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill: {stderr}"
    left = all_files(out)
    assert any(name.startswith(".augbatch-tmp/bucket-") for name in left), left
    assert "manifest.json" not in left  # the killed run never claimed to be complete
    assert not any(name.endswith(".tfrecord") and "/" not in name for name in left), left

    # Without --overwrite (or --resume, which the message names) the leftovers are refused;
    # with it they are replaced.
    refused = CliRunner().invoke(main, command[3:])
    assert refused.exit_code == 2, refused.output
    assert f"error: output directory {out} holds an interrupted run's files" in refused.stderr
    assert "hint: pass --resume to go on with the work it kept, or --overwrite" in refused.stderr
    result = subprocess.run(command + ["--overwrite"], cwd=root, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr

    reference = clean_run(cfg, images, tmp_path / "reference")
    assert shard_bytes(out) == shard_bytes(tmp_path / "reference")
    assert (open(out / "errors.jsonl", "rb").read()
            == open(tmp_path / "reference" / "errors.jsonl", "rb").read())
    assert all_files(out) == all_files(tmp_path / "reference") == [
        "augmented-00000-of-00003.tfrecord", "augmented-00001-of-00003.tfrecord",
        "augmented-00002-of-00003.tfrecord", "errors.jsonl", "manifest.json"]
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["counts"] == reference["counts"]
    assert manifest["counts"]["written"] == 18
    assert_accounted(manifest)


def test_a_failed_batch_is_retried_with_identical_bytes(small_folder, tmp_path, monkeypatch):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(CONFIG)
    clean_run(cfg, small_folder, tmp_path / "clean")

    marker = tmp_path / "failed-once"
    monkeypatch.setenv(transforms.FAIL_ONCE_ENV, f"augment:{marker}")
    manifest = clean_run(cfg, small_folder, tmp_path / "retried")
    assert marker.exists()  # the injected failure happened (once: the marker now exists)
    assert shard_bytes(tmp_path / "retried") == shard_bytes(tmp_path / "clean")
    assert open(tmp_path / "retried" / "errors.jsonl").read() == ""
    assert (manifest["counts"]["written"], manifest["counts"]["errored"]) == (9, 0)


def test_nothing_is_written_outside_the_output_directory(tmp_path):
    """Input names, class names and features that look like paths ('..', backslashes) only
    ever end up inside records: keys and labels are never used to build a path."""
    work = tmp_path / "work"
    images = work / "data" / "images"
    cls = images / "up .. here"
    os.makedirs(cls)
    photo = os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg")
    for name in ("a..b.jpg", "x\\..\\..\\..\\evil.jpg", "..evil.jpg"):
        shutil.copy(photo, cls / name)
    records = work / "records"
    os.makedirs(records)
    data = open(photo, "rb").read()
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
        "image/class/text": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[b"../../../evil"])),
        "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[b"/tmp/../../evil.jpg"]))}))
    (records / "a..%2F..%2Fevil.tfrecord").write_bytes(
        sources.frame_record(example.SerializeToString()))
    before = all_files(tmp_path)

    out_images, out_records = tmp_path / "out" / "images", tmp_path / "out" / "records"
    # The input given through a path with '..' segments.
    run.run_expand(config.load(None, overrides={
        "input": (str(work / "data" / ".." / "data" / "images"),), "output": str(out_images),
        "copies": 1, "plain_copies": True}))
    run.run_expand(config.load(None, overrides={
        "input": (str(records),), "output": str(out_records), "copies": 1,
        "plain_copies": True}))

    new = sorted(set(all_files(tmp_path)) - set(before))
    assert all(name.startswith("out/images/") or name.startswith("out/records/")
               for name in new), new
    assert all("evil" not in name for name in new), new
    keys = {row["source_id"] for row in read_outputs(out_images)}
    # A backslash is part of a Linux file name, not a separator; '..evil.jpg' is hidden.
    assert keys == {"up .. here/a..b.jpg", "up .. here/x\\..\\..\\..\\evil.jpg"}
    rows = read_outputs(out_records)
    assert {row["image/class/text"] for row in rows} == {b"../../../evil"}


def test_non_empty_output_is_refused_without_overwrite(small_folder, tmp_path):
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "notes.txt").write_text("mine")
    (out / "augmented-00000-of-00007.tfrecord").write_bytes(b"stale shard of an older run")
    args = ["expand", "-i", small_folder, "-o", str(out), "--copies", "0", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert f"error: output directory {out} is not empty (2 files)" in result.stderr
    assert "hint: pass --overwrite" in result.stderr and "Traceback" not in result.output

    # No manifest of an earlier run lists them: --overwrite deletes nothing and says why.
    result = CliRunner().invoke(main, args + ["--overwrite"])
    assert result.exit_code == 2
    assert (f"error: --overwrite refused: {out} holds 2 files augbatch did not write: "
            "augmented-00000-of-00007.tfrecord, notes.txt") in result.stderr
    assert sorted(os.listdir(out)) == ["augmented-00000-of-00007.tfrecord", "notes.txt"]


def test_once_a_run_is_stopped_its_workers_write_and_commit_nothing_more(tmp_path):
    """What a stopped run says it kept is what --resume finds: after sinks.stop_writing, a
    worker thread still running opens no bucket and commits no bundle (a bundle begun before
    the stop included), and a new run of the same output may write again."""
    from pipeline import sinks
    tmp_dir = str(tmp_path / sinks.TMP_DIR)

    def bundle(keys):
        writer = sinks.WriteBuckets(tmp_dir, 2)
        writer.setup()
        writer.start_bundle()
        for key in keys:
            assert writer.process(transforms.OutputRecord(key, 0, 1, b"x" * 100)) is None
        return writer

    committed = list(bundle(["a", "b"]).finish_bundle())
    assert committed and len(sinks.read_journals(tmp_dir)[0]) == 2
    begun = bundle(["c"])  # its bucket is open when the stop comes
    sinks.stop_writing(tmp_dir)
    try:
        late = bundle(["d"])
        assert late.files == {}  # no bucket opened
        assert list(begun.finish_bundle()) == [] and list(late.finish_bundle()) == []
        assert sinks.read_journals(tmp_dir)[0] == {"a", "b"}
        assert len([n for n in os.listdir(tmp_dir) if n.startswith("done-")]) == 1  # no .part
    finally:
        sinks.stop_writing(tmp_dir, stopped=False)
    assert list(bundle(["e"]).finish_bundle())  # a new run writes again
    assert sinks.read_journals(tmp_dir)[0] == {"a", "b", "e"}


def test_a_long_bundle_commits_at_a_batch_end_once_its_interval_is_over(tmp_path, monkeypatch):
    """On one local worker a run is one bundle: every COMMIT_SECONDS it commits what it has
    written at the next batch's end (never inside a batch: an input's records are all in one)
    and goes on in new buckets, so a stop keeps that work."""
    from pipeline import sinks
    tmp_dir = str(tmp_path / sinks.TMP_DIR)
    monkeypatch.setenv(sinks.COMMIT_ENV, "0")
    writer = sinks.WriteBuckets(tmp_dir, 2)
    writer.setup()
    writer.start_bundle()

    def write(key, copy, ends_batch=False):
        return writer.process(transforms.OutputRecord(key, copy, 1, b"x" * 100,
                                                      ends_batch=ends_batch)) or []
    assert write("a", 0) == [] and write("a", 1) == []  # inside a batch: nothing committed
    first = write("b", 0, ends_batch=True)
    assert first and sinks.read_journals(tmp_dir)[0] == {"a", "b"}
    assert write("c", 0) == []
    rest = list(writer.finish_bundle())
    done, buckets, _ = sinks.read_journals(tmp_dir)
    assert done == {"a", "b", "c"} and len(buckets) == len(first) + len(rest)
    assert not {path for _, (_, path) in (b.value for b in first)} & {
        path for _, (_, path) in (b.value for b in rest)}  # the rest went to new buckets
    monkeypatch.setenv(sinks.COMMIT_ENV, "30")  # the default's order: one commit per bundle
    writer.setup()
    writer.start_bundle()
    assert write("d", 0, ends_batch=True) == [] and list(writer.finish_bundle())


def test_ctrl_c_on_one_worker_keeps_what_was_committed_and_resume_gives_the_clean_bytes(
        small_folder, tmp_path):
    """The default runner (one worker in this process: one bundle) stopped by Ctrl-C keeps the
    batches committed so far (AUGBATCH_COMMIT_INTERVAL=0: at every batch's end); --resume
    then writes the bytes of a run never stopped."""
    images, out = small_folder, tmp_path / "out"
    command = [sys.executable, "-m", "cli", "-q", "expand", "-i", str(images), "-o", str(out),
               "--copies", "3", "--format", "png", "--plain-copies", "--batch-size", "2"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", AUGBATCH_COMMIT_INTERVAL="0")
    process = subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    tmp_dir, deadline = out / ".augbatch-tmp", time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if tmp_dir.is_dir() and any(n.startswith("done-") and n.endswith(".json")
                                    for n in os.listdir(tmp_dir)):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGINT, stderr
    match = re.search(r"the work of (\d+) inputs is kept in", stderr)
    assert match and 1 <= int(match.group(1)) < 9, stderr
    resumed = subprocess.run(command + ["--resume"], cwd=root, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    clean = subprocess.run(command[:8] + [str(tmp_path / "clean")] + command[9:], cwd=root,
                           env=env, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    assert shard_bytes(out) == shard_bytes(tmp_path / "clean")
    assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "clean"))


def test_the_buckets_of_an_earlier_bucket_format_are_not_resumed(small_folder, tmp_path):
    """Work kept by an augbatch whose bucket files held the records unframed (its run.json
    names no bucket format) is refused by --resume, not read as framed records; the kept work
    is left as it was."""
    from pipeline import sinks
    out, config_file = tmp_path / "out", tmp_path / "config.yaml"
    config_file.write_text(CONFIG)
    job = config.load(str(config_file), overrides={"input": (small_folder,), "output": str(out)})
    discovery = sources.discover(job)
    earlier = run._fingerprint(job, discovery, run.pick_num_shards(job, discovery))
    assert earlier.pop("buckets") == sinks.BUCKET_FORMAT
    kept = out / sinks.TMP_DIR
    os.makedirs(kept)
    (kept / run.RUN_FILE).write_text(json.dumps(earlier, sort_keys=True))
    result = CliRunner().invoke(main, ["expand", "-c", str(config_file), "-i",
                                      small_folder, "-o", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    assert "--resume: the interrupted run in" in result.stderr
    assert "differs from this one in buckets" in result.stderr  # (and in nothing else)
    assert "in buckets, " not in result.stderr
    assert os.listdir(kept) == [run.RUN_FILE]
