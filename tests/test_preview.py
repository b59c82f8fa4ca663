"""`augbatch preview`: its tiles are the pixels expand writes, its sampling follows the seed."""
import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import cli
from pipeline import config, preview
from tests.conftest import SAMPLE_TFRECORDS, read_outputs

CHAIN = [
    {"op": "tf.image.random_flip_left_right"},
    {"op": "tf.image.random_brightness", "max_delta": 0.2},
    {"op": "tf.image.random_contrast", "lower": 0.7, "upper": 1.3},
    {"op": "tf.image.random_hue", "max_delta": 0.08},
    {"op": "tf.image.random_crop_and_resize", "scale": [0.6, 1.0]},
    {"op": "tf.image.resize", "height": 56, "width": 64},
]


def write_config(tmp_path, **augment):
    path = tmp_path / "preview.yaml"
    path.write_text(yaml.safe_dump({"augment": {"chain": CHAIN, "copies": 2, "seed": 5,
                                                **augment}}))
    return str(path)


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_tiles_are_the_pixels_expand_writes(small_folder, tmp_path, image_format):
    config_path = write_config(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.main, ["expand", "-c", config_path, "-i", small_folder,
                                           "-o", str(out), "--format", image_format, "-q"])
    assert result.exit_code == 0, result.output
    written = {(r["source_id"], r["copy_index"]): r["image"] for r in read_outputs(str(out))}

    job = config.load(config_path, overrides={"input": [small_folder], "output": "-",
                                              "format": image_format})
    rows = preview.rows(job, n=4)
    assert len(rows) == 4
    for row in rows:
        assert row.error is None
        assert len(row.copies) == 2
        for copy_index, tile in enumerate(row.copies, start=1):
            assert tile.shape == (56, 64, 3)
            np.testing.assert_array_equal(tile, written[(row.key, copy_index)])
        np.testing.assert_array_equal(row.original, written[(row.key, 0)])


def test_sampling_follows_the_seed(small_folder, tmp_path):
    def keys(seed):
        job = config.load(write_config(tmp_path, seed=seed),
                          overrides={"input": [small_folder], "output": "-"})
        return [item.key for item in preview.sample(job, 3)]
    first = keys(1)
    assert keys(1) == first
    assert len(set(first)) == 3 and first == sorted(first)
    others = [keys(seed) for seed in (2, 3, 4)]
    assert any(other != first for other in others)


def test_cli_writes_a_sheet_of_rows_and_columns(small_folder, tmp_path):
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(cli.main, ["preview", "-c", write_config(tmp_path), "-i",
                                           small_folder, "-n", "3", "--copies", "4",
                                           "--tile-size", "96", "-o", str(sheet)])
    assert result.exit_code == 0, result.output
    assert f"preview: {sheet} (3 inputs, original + 4 copies each, seed 5)" in result.output
    with Image.open(sheet) as image:
        assert image.format == "PNG"
        columns, rows = 1 + 4, 3
        assert image.width == preview.PAD + columns * (96 + preview.PAD)
        assert image.height > rows * 96


def test_tfrecord_input(tmp_path):
    job = config.load(write_config(tmp_path), overrides={"input": [SAMPLE_TFRECORDS],
                                                         "output": "-"})
    rows = preview.rows(job, n=3, copies=1)
    assert len(rows) == 3
    for row in rows:
        assert ".tfrecord:" in row.key and row.error is None
        assert row.label_text and row.copies[0].shape == (56, 64, 3)


def test_an_input_that_fails_shows_its_error(small_folder, tmp_path):
    bad = os.path.join(small_folder, "objects", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"this is not a JPEG")
    sheet = tmp_path / "sheet.png"
    result = CliRunner().invoke(cli.main, ["preview", "-c", write_config(tmp_path), "-i",
                                           small_folder, "-n", "20", "-o", str(sheet)])
    assert result.exit_code == 0, result.output
    assert "10 inputs" in result.output
    assert "objects/broken.jpg would not be written: decode: " in result.output
    assert sheet.exists()


def test_bad_sheet_name_is_a_user_error(small_folder, tmp_path):
    result = CliRunner().invoke(cli.main, ["preview", "-c", write_config(tmp_path), "-i",
                                           small_folder, "-o", str(tmp_path / "sheet.gif")])
    assert result.exit_code == 2
    assert "error: cannot write a preview as '.gif'" in result.stderr
    assert "hint: name the file .png" in result.stderr


def test_a_title_cut_to_its_lines_says_so():
    """The sheet's title (the chain, with --explain) has at most a few lines: one cut short
    ends with '…', never silently without its last ops."""
    from PIL import ImageDraw
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), preview._font(15)
    chain = " > ".join(f"tf.image.random_op_{i}" for i in range(40))
    lines = preview._wrap(draw, chain, font, 300, max_lines=2)
    assert len(lines) == 2 and lines[-1].endswith("…") and not lines[0].endswith("…")
    assert all(draw.textlength(line, font=font) <= 300 for line in lines)
    short = preview._wrap(draw, "flip > rotate", font, 300, max_lines=2)
    assert short == ["flip > rotate"]
