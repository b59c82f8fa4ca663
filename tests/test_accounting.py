"""Every input ends in exactly one place: written, or one line of errors.jsonl. A bad input in a
batch does not take the good ones with it; error limits fail the run loudly after everything is
written; the run ends with a summary by stage and reason."""
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipeline import config, run, sources
from pipeline import transforms as T
from tests.conftest import assert_accounted, read_outputs, shard_bytes

POISON_OPS = '''
def refuse_flat(image, rng):
    """A user function that fails on some images: those of one flat colour."""
    if image.min() == image.max():
        raise ValueError("flat image: nothing to augment")
    return 255 - image
'''


def write_image(path, seed=None, flat=None, size=16):
    if flat is not None:
        array = np.full((size, size, 3), flat, np.uint8)
    else:
        array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)


@pytest.fixture
def poison_folder(tmp_path, monkeypatch):
    """Four noise images and one flat one, all 16x16 (so they batch together), and a config
    whose python op fails on the flat one."""
    (tmp_path / "poison_ops.py").write_text(POISON_OPS)
    monkeypatch.syspath_prepend(str(tmp_path))
    images = tmp_path / "images"
    os.makedirs(images)
    for i in range(4):
        write_image(images / f"good_{i}.png", seed=i)
    write_image(images / "flat.png", flat=128)
    cfg = tmp_path / "poison.yaml"
    cfg.write_text("augment:\n  copies: 2\n  chain:\n"
                   "    - {op: python, function: 'poison_ops:refuse_flat'}\n"
                   "output: {format: png}\n")
    return images, cfg


def load_job(cfg, images, output):
    return config.load(str(cfg), overrides={"input": (str(images),), "output": str(output)},
                       allow_python_ops=True)


def test_a_poison_image_in_a_batch_spoils_nothing(poison_folder, tmp_path):
    """The DoFn is given one batch holding the poison among good images of the same shape:
    the batch fails, each image is retried alone, the good ones give exactly the bytes they
    give when processed on their own and the poison gives one error record."""
    images, cfg = poison_folder
    job = load_job(cfg, images, tmp_path / "unused")
    discovery = sources.discover(job)
    read, decode = T.ReadImageFile(discovery.label_names), T.DecodeImage(3, job.max_pixels)
    decode.setup()
    decoded = {ref.key: next(decode.process(next(read.process(ref))))
               for ref in discovery.refs}
    augment = T.AugmentAndEncode(job, job.config_hash)
    augment.setup()

    batch = [decoded[k] for k in ("good_0.png", "flat.png", "good_1.png", "good_2.png")]
    out = augment.process_now(batch)
    errors = [o.value for o in out if isinstance(o, T.beam.pvalue.TaggedOutput)]
    records = [o for o in out if isinstance(o, T.OutputRecord)]
    assert len(out) == len(errors) + len(records)
    assert [(e.key, e.stage) for e in errors] == [("flat.png", "augment")]
    assert "flat image: nothing to augment" in errors[0].message
    assert sorted((r.key, r.copy_index) for r in records) == [
        (key, c) for key in ("good_0.png", "good_1.png", "good_2.png") for c in (0, 1, 2)]
    for key in ("good_0.png", "good_1.png", "good_2.png"):
        alone = {r.copy_index: r.payload for r in augment.process_now([decoded[key]])}
        assert {r.copy_index: r.payload for r in records if r.key == key} == alone


def test_a_poison_image_in_a_pipeline_run(poison_folder, tmp_path):
    images, cfg = poison_folder
    manifest = run.run_expand(load_job(cfg, images, tmp_path / "out"))
    errors = [json.loads(line) for line in open(tmp_path / "out" / "errors.jsonl")]
    assert [(e["key"], e["stage"], e["error_type"]) for e in errors] == [
        ("flat.png", "augment", "InvalidArgumentError")]
    assert "flat image: nothing to augment" in errors[0]["message"]
    written = sorted({row["source_id"] for row in read_outputs(tmp_path / "out")})
    assert written == [f"good_{i}.png" for i in range(4)]
    assert (manifest["counts"]["written"], manifest["counts"]["errored"]) == (4, 1)
    assert_accounted(manifest)


# --- error limits and the summary, through the command line -----------------------------------

@pytest.fixture
def mixed_folder(tmp_path):
    """Three good images, two broken ones (one empty, one text)."""
    images = tmp_path / "images"
    os.makedirs(images)
    for i in range(3):
        write_image(images / f"good_{i}.png", seed=i)
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.png").write_text("not an image")
    return images


def expand(*args):
    return CliRunner().invoke(main, ["expand", "--copies", "1", "--format", "png", "--plain-copies",
                                     *args])


def test_by_default_bad_inputs_are_reported_and_the_run_succeeds(mixed_folder, tmp_path):
    out = tmp_path / "out"
    result = expand("-i", str(mixed_folder), "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "5 inputs -> 6 records in 1 shard" in lines[0]
    assert lines[1] == "  written: 3 inputs, errored: 2"
    assert lines[2] == "  errors by stage: decode 2"
    assert lines[3] == "  top reasons:"
    assert sorted(lines[4:6]) == ["         1 x empty file (decode)",
                                  "         1 x not an image (decode)"]
    assert lines[6] == f"  every error, with its file and record: {out}/errors.jsonl"
    assert lines[-1] == f"output: {out}"
    assert len(open(out / "errors.jsonl").readlines()) == 2


@pytest.mark.parametrize("limit", [["--max-errors", "1"], ["--max-error-rate", "0.3"]])
def test_past_the_error_limit_the_run_fails_after_writing_everything(mixed_folder, tmp_path,
                                                                     limit):
    out = tmp_path / "out"
    result = expand("-i", str(mixed_folder), "-o", str(out), *limit)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert (f"\nerror: too many bad inputs: 2 of 5 failed (40.0%), over {' '.join(limit)}\n"
            in result.stderr), result.stderr
    assert "1 x empty file (decode)" in result.stderr
    assert "hint: fix or remove the bad inputs, or raise the limit" in result.stderr
    # Everything was written before failing: the errors, the manifest, the good inputs.
    assert len(open(out / "errors.jsonl").readlines()) == 2
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["error_limit"]["exceeded"] is True
    assert manifest["error_limit"]["error_rate"] == 0.4
    assert_accounted(manifest)
    assert len(read_outputs(out)) == 3 * 2
    assert not os.path.exists(out / ".augbatch-tmp")


def test_error_limits_from_the_config_and_not_exceeded(mixed_folder, tmp_path):
    cfg = tmp_path / "limits.yaml"
    cfg.write_text("errors:\n  max_errors: 2\n  max_error_rate: 0.4\n")
    result = expand("-c", str(cfg), "-i", str(mixed_folder), "-o", str(tmp_path / "ok"))
    assert result.exit_code == 0, result.output  # exactly at the limits is fine
    cfg.write_text("errors:\n  max_error_rate: 0.25\n")
    result = expand("-c", str(cfg), "-i", str(mixed_folder), "-o", str(tmp_path / "over"))
    assert result.exit_code == 3, result.output
    assert "over --max-error-rate 0.25" in result.stderr


def test_accounting_check_fails_loudly_when_an_input_is_lost(mixed_folder, tmp_path):
    """The check itself, given the manifest of a real run with one written input taken away."""
    job = config.load(None, overrides={"input": (str(mixed_folder),),
                                       "output": str(tmp_path / "out"), "plain_copies": True})
    manifest = run.run_expand(job)
    discovery = sources.discover(job)
    run.check_accounting(manifest, discovery)  # the real run is complete
    manifest["counts"]["written"] -= 1
    with pytest.raises(RuntimeError, match="accounting failed: 5 inputs discovered but 2 "
                                           "written"):
        run.check_accounting(manifest, discovery)
    manifest["counts"]["written"] += 1
    manifest["counts"]["discovered"] -= 1
    with pytest.raises(RuntimeError, match="5 inputs listed but 4 read"):
        run.check_accounting(manifest, discovery)


def test_errors_file_is_sorted_and_complete(mixed_folder, tmp_path):
    """errors.jsonl is a pure function of the inputs: two runs give the same bytes."""
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        assert expand("-i", str(mixed_folder), "-o", str(out), "-q").exit_code == 0
    errors = open(first / "errors.jsonl", "rb").read()
    assert errors == open(second / "errors.jsonl", "rb").read()
    keys = [json.loads(line)["key"] for line in errors.splitlines()]
    assert keys == ["empty.jpg", "notes.png"]
    assert set(json.loads(errors.splitlines()[0])) == {
        "key", "source", "record_index", "stage", "error_type", "message", "reason"}
    assert shard_bytes(first) == shard_bytes(second)


def test_symlinked_class_folder_is_followed(tmp_path):
    """A dataset assembled from links: the linked class folder is read like a real one."""
    store = tmp_path / "store" / "cats"
    os.makedirs(store)
    write_image(store / "cat.png", seed=1)
    images = tmp_path / "images"
    os.makedirs(images / "dogs")
    write_image(images / "dogs" / "dog.png", seed=2)
    os.symlink(store, images / "cats")
    manifest = run.run_expand(config.load(None, overrides={
        "input": (str(images),), "output": str(tmp_path / "out"), "copies": 0}))
    assert manifest["input"]["label_names"] == ["cats", "dogs"]
    assert sorted(r["source_id"] for r in read_outputs(tmp_path / "out")) == [
        "cats/cat.png", "dogs/dog.png"]
    assert_accounted(manifest)
    shutil.rmtree(tmp_path / "store")
