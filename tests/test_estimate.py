"""Estimates before the bill: `expand --dry-run` says how many records, roughly how many bytes and
how long, from a few sampled inputs run through the real steps; `--max-output-bytes` refuses a run
whose estimate is over it (nothing written) and fails, keeping nothing, a run that comes out over
it. Real TensorFlow, real Beam runs, real files."""
import gzip
import json
import os
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import cli
from pipeline import estimate, sources
from tests.conftest import ROOT, SAMPLE_IMAGES, SAMPLE_TFRECORDS, make_job

CHAIN = [{"op": "tf.image.random_flip_left_right"},
         {"op": "tf.image.random_crop_and_resize", "scale": [0.8, 1.0]},
         {"op": "tf.image.random_brightness", "max_delta": 0.1}]


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def uniform_folder(folder, per_class=6, size=(96, 72)):
    """Sample photos resized to one size, as JPEG files in class folders (12 inputs)."""
    for class_dir in ("objects", "textures"):
        names = sorted(os.listdir(os.path.join(SAMPLE_IMAGES, class_dir)))[:per_class]
        os.makedirs(os.path.join(folder, class_dir))
        for name in names:
            with Image.open(os.path.join(SAMPLE_IMAGES, class_dir, name)) as image:
                image.convert("RGB").resize(size).save(
                    os.path.join(folder, class_dir, os.path.splitext(name)[0] + ".jpg"),
                    quality=90)
    return str(folder)


def config_file(tmp_path, **augment):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"augment": {"chain": CHAIN, "seed": 3, **augment}}))
    return path


def reported(text):
    """(records, bytes) of a dry run's report."""
    records = int(re.search(r"^records: ~?(\d+) ", text, re.M).group(1))
    number, unit = re.search(r"^bytes: ~([\d.]+) (B|KB|MB|GB)", text, re.M).groups()
    return records, float(number) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


def written_bytes(out):
    return sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)
               if ".tfrecord" in n)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return uniform_folder(tmp_path_factory.mktemp("uniform") / "photos")


@pytest.mark.parametrize("augment,flags", [
    ({"copies": 3}, []),
    ({"copies": 2, "keep_original": False, "balance": {"copies": {"textures": 5}}}, []),
    ({"copies": 6}, ["--compression", "gzip", "--format", "png"]),
], ids=["copies", "balance", "gzip_png"])
def test_the_dry_run_counts_the_records_a_run_writes_and_its_bytes_within_20_percent(
        photos, tmp_path, augment, flags):
    config = config_file(tmp_path, **augment)
    out = tmp_path / "out"
    dry = invoke("expand", "-c", config, "-i", photos, "-o", out, "--dry-run", *flags)
    assert dry.exit_code == 0, dry.output
    assert not out.exists()
    assert re.search(r"^bytes: ~.* \(from 8 sampled of 12 inputs, \d cop(y|ies) each; \+/-\d+%\)$",
                     dry.output, re.M), dry.output
    assert re.search(r"^time: ~[\d.]+s on this machine \(a rough single-machine estimate",
                     dry.output, re.M), dry.output
    records, size = reported(dry.output)

    run = invoke("expand", "-q", "-c", config, "-i", photos, "-o", out, *flags)
    assert run.exit_code == 0, run.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert records == manifest["counts"]["outputs"]
    real = written_bytes(out)
    assert 0.8 * real <= size <= 1.25 * real, (size, real)


def test_every_input_and_copy_sampled_is_the_exact_byte_count(photos, tmp_path):
    # 12 inputs of which 8 are sampled: with 4 of them the sample is the whole run.
    small = tmp_path / "small"
    os.makedirs(small / "objects")
    for name in sorted(os.listdir(os.path.join(photos, "objects")))[:4]:
        os.link(os.path.join(photos, "objects", name), small / "objects" / name)
    job = make_job(str(small), tmp_path / "out", CHAIN, copies=2, seed=3)
    found = estimate.estimate(job, sources.discover(job))
    assert (found.sampled, found.sampled_copies, found.spread) == (4, 2, 0.0)
    assert "every input and copy measured" in found.lines()[1]
    from pipeline import run
    run.run_expand(job)
    assert found.bytes == written_bytes(tmp_path / "out")


def test_tfrecord_inputs_are_counted_record_by_record(tmp_path):
    config = config_file(tmp_path, copies=2)
    out = tmp_path / "out"
    dry = invoke("expand", "-c", config, "-i", SAMPLE_TFRECORDS, "-o", out, "--dry-run")
    assert dry.exit_code == 0, dry.output
    records, size = reported(dry.output)
    run = invoke("expand", "-q", "-c", config, "-i", SAMPLE_TFRECORDS, "-o", out)
    assert run.exit_code == 0, run.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert records == manifest["counts"]["outputs"] == 3 * manifest["counts"]["written"]
    assert 0.5 * written_bytes(out) <= size <= 2 * written_bytes(out)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_tfrecord_records_are_counted_by_their_headers_and_scaled_past_the_time_budget(
        tmp_path, monkeypatch, compress):
    folder = tmp_path / "records"
    os.makedirs(folder)
    for name in sorted(os.listdir(SAMPLE_TFRECORDS)):
        data = open(os.path.join(SAMPLE_TFRECORDS, name), "rb").read()
        with (gzip.open if compress else open)(folder / name, "wb") as f:
            f.write(data)
    paths = sorted(str(folder / name) for name in os.listdir(folder))
    records, payload, exact = estimate._count_records(paths)
    real = sum(len(sources.records_of(open(os.path.join(SAMPLE_TFRECORDS, name), "rb").read()))
               for name in os.listdir(SAMPLE_TFRECORDS))
    assert (records, exact) == (real, True)
    monkeypatch.setattr(estimate, "COUNT_SECONDS", 0.0)  # stops after the first record
    scaled, _, exact = estimate._count_records(paths)
    assert not exact and scaled >= 1
    if not compress:  # (gzip reads ahead up to 128 KB: scaling shows on large files only)
        assert 0.2 * real <= scaled <= 5 * real


def test_inputs_with_boxes_are_estimated_through_the_target_rules(tmp_path):
    config = os.path.join(ROOT, "sample_configs", "detection.yaml")
    out = tmp_path / "out"
    dry = invoke("expand", "-c", config, "-o", out, "--copies", 2, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "inputs that fail write none, nor do copies the target rules drop" in dry.output
    assert "every input and copy measured" not in dry.output  # (a copy may be dropped)
    records, size = reported(dry.output)
    run = invoke("expand", "-q", "-c", config, "-o", out, "--copies", 2)
    assert run.exit_code == 0, run.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert records == manifest["counts"]["outputs"] == 12
    assert 0.95 * written_bytes(out) <= size <= 1.05 * written_bytes(out)


def test_the_sample_is_bounded_in_inputs_copies_pixels_and_time(tmp_path, monkeypatch):
    folder = tmp_path / "many"
    os.makedirs(folder / "a")
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(folder / "a" / f"{i}.png")
    job = make_job(str(folder), tmp_path / "out", CHAIN, copies=10, seed=1)
    discovery = sources.discover(job)
    found = estimate.estimate(job, discovery)
    assert (found.inputs, found.records) == (30, 330)
    assert (found.sampled, found.sampled_copies) == (8, estimate.SAMPLE_COPIES)
    # An input over the pixel budget gets one copy; past the time budget no more inputs.
    monkeypatch.setattr(estimate, "SAMPLE_PIXELS", 24 * 32 * 2 - 1)
    monkeypatch.setattr(estimate, "SAMPLE_SECONDS", 0.0)
    found = estimate.estimate(job, discovery)
    assert (found.sampled, found.sampled_copies, found.spread) == (1, 1, None)
    assert found.records == 330 and found.bytes > 0
    assert "the spread is unknown from one input" in found.lines()[1]


def test_max_output_bytes_refuses_an_estimate_over_it_before_anything_is_written(photos,
                                                                                  tmp_path):
    config = config_file(tmp_path, copies=3)
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        result = invoke("expand", "-c", config, "-i", photos, "-o", out,
                        "--max-output-bytes", "20KB", *extra)
        assert result.exit_code == 2, result.output
        assert "error: --max-output-bytes 20.0 KB (20000 bytes) refused the run: it would " \
               "write about " in result.output
        assert "48 records" in result.output and "Traceback" not in result.output
        assert not out.exists()
    assert "records: 48 " in result.output  # the dry run's report came first

    result = invoke("expand", "-q", "-c", config, "-i", photos, "-o", out,
                    "--max-output-bytes", "2MiB")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["estimate"]["max_output_bytes"] == 2 * 1024 * 1024
    assert manifest["estimate"]["records"] == manifest["counts"]["outputs"] == 48


def test_a_run_that_comes_out_over_the_limit_keeps_nothing(tmp_path):
    # Eight small smooth photos are sampled; the one left out is noise, which JPEG cannot
    # shrink: the run writes far more than the estimate.
    folder = tmp_path / "photos"
    os.makedirs(folder / "a")
    rng = np.random.default_rng(1)
    for i in range(9):
        if i == 4:  # (estimate._spread leaves out the 5th of 9)
            pixels = rng.integers(0, 255, (256, 256, 3), np.uint8)
        else:
            pixels = np.full((32, 32, 3), 40 * (i % 5), np.uint8)
        Image.fromarray(pixels).save(folder / "a" / f"{i}.jpg", quality=10)
    job = make_job(str(folder), tmp_path / "x", CHAIN, copies=1, seed=1)
    found = estimate.estimate(job, sources.discover(job))
    limit = 2 * found.bytes
    config = config_file(tmp_path, copies=1)
    out = tmp_path / "out"
    result = invoke("expand", "-c", config, "-i", folder, "-o", out, "--seed", 1,
                    "--max-output-bytes", limit)
    assert result.exit_code == 2, result.output
    assert re.search(r"error: --max-output-bytes .*: the run wrote .* over the limit \(its "
                     r"estimate was .*\); its files were deleted and nothing of it was kept",
                     result.output), result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("value", ["lots", "0", "-5", "5XB", "1e9", ""])
def test_bad_max_output_bytes_values_exit_2_naming_the_option(tmp_path, value):
    result = invoke("expand", "-c", config_file(tmp_path), "-i", SAMPLE_IMAGES, "-o",
                    tmp_path / "out", "--max-output-bytes", value)
    assert result.exit_code == 2, result.output
    assert "--max-output-bytes" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,size", [("1000", 1000), ("500MB", 500 * 10**6),
                                       ("2GiB", 2 * 2**30), ("1.5G", 1_500_000_000),
                                       ("64 kib", 65536), ("3TB", 3 * 10**12)])
def test_sizes_read_as_people_write_them(text, size):
    assert estimate.parse_size(text) == size
