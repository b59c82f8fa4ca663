"""Messages that say what is true: the op a stack lacks, the input the user named where they
named it, counts that agree from the first line to the last, and lines that end."""
import os
import shutil
import subprocess
import sys

import keras
import pytest
import yaml
from click.testing import CliRunner

import cli
from pipeline import progress, run, sources
from pipeline.errors import ConfigError
from pipeline.ops import registry
from tests.conftest import ROOT, SAMPLE_IMAGES, copy_sample_photos, make_job

KERAS_3 = keras.__version__.startswith("3.")


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def write_config(path, input_path):
    path.write_text(yaml.safe_dump({"version": 1, "input": str(input_path), "augment": {
        "copies": 1, "chain": [{"op": "tf.image.random_flip_left_right"}]}}))
    return path


def test_a_keras_3_layer_on_keras_2_says_it_needs_the_modern_stack():
    if KERAS_3:  # the modern stack has it
        assert registry.get("keras.layers.RandAugment").family == "keras.layers"
        return
    with pytest.raises(ConfigError) as raised:
        registry.get("keras.layers.RandAugment", "augment.chain[0].op")
    assert str(raised.value) == ("augment.chain[0].op: keras.layers.RandAugment needs Keras 3 "
                                 "(the modern stack: Python 3.12, TensorFlow 2.16+); this stack "
                                 f"has Keras {keras.__version__}")
    assert "did you mean" not in str(raised.value)
    # An unknown name still gets its suggestion.
    with pytest.raises(ConfigError, match="did you mean 'keras.layers.RandomContrast'"):
        registry.get("keras.layers.RandomContrasts")


def test_a_missing_input_is_blamed_where_it_was_named(tmp_path):
    config = write_config(tmp_path / "job.yaml", tmp_path / "no_such_folder")
    result = invoke("expand", "-c", config, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert f"error: input.path {tmp_path / 'no_such_folder'}: no such file or folder" \
        in result.stderr
    assert "--input" not in result.stderr.splitlines()[0]
    result = invoke("expand", "-c", config, "-o", tmp_path / "out", "-i", tmp_path / "nor_this")
    assert f"error: --input {tmp_path / 'nor_this'}: no such file or folder" in result.stderr
    assert not (tmp_path / "out").exists()


def test_validate_warns_of_an_input_that_does_not_exist(tmp_path):
    config = write_config(tmp_path / "job.yaml", tmp_path / "no_such_folder")
    result = invoke("validate", config)
    assert result.exit_code == 0 and ": valid (1 op," in result.stdout
    assert result.stderr == (f"warning: input.path {tmp_path / 'no_such_folder'}: no such file "
                             "or folder (expand would refuse it; --input can name another)\n")
    write_config(config, SAMPLE_IMAGES)
    result = invoke("validate", config)
    assert result.exit_code == 0 and result.stderr == ""


def test_counts_agree_and_read_as_english(tmp_path):
    """A run with an input discovery rejects (an image beside the class folders): the first line
    and the last count the same inputs; one shard is '1 shard'; every line ends."""
    photos = copy_sample_photos(tmp_path / "photos", per_class=1)
    shutil.copy(os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg"),
                os.path.join(photos, "beside.jpg"))
    command = [sys.executable, os.path.join(ROOT, "cli.py"), "expand", "-i", photos, "-o",
               str(tmp_path / "out"), "--copies", "1", "--num-shards", "1", "--max-errors", "0",
               "--plain-copies"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 3, done.stderr
    assert f"INFO augbatch: 4 inputs -> 1 shard in {tmp_path / 'out'} (runner" in done.stderr
    assert "error: too many bad inputs: 1 of 4 failed" in done.stderr
    assert done.stderr.endswith("\n") and "\nhint: fix or remove the bad inputs" in done.stderr
    assert "progress: 4/4 inputs (100%)" in done.stderr  # the rejected one counts as done
    summary = progress.summary({"counts": {"discovered": 4, "outputs": 6, "written": 3,
                                           "errored": 1},
                                "output": {"num_shards": 1, "directory": "out"}})
    assert summary[0] == "done in 0.0s: 4 inputs -> 6 records in 1 shard"


def test_the_warnings_before_a_run_count_in_english(tmp_path, caplog):
    photos = copy_sample_photos(tmp_path / "photos", per_class=1)
    for count in (1, 2):
        with open(os.path.join(photos, "objects", f"notes{count}.txt"), "w") as f:
            f.write("not an image")
        caplog.clear()
        run._warn_about(sources.discover(make_job(photos, tmp_path / "out")))
        assert ("1 file is not an image of a supported format, e.g. objects/notes1.txt"
                if count == 1 else "2 files are not images of a supported format, e.g. "
                "objects/notes1.txt") in caplog.text, caplog.text
