"""The two tested stacks, each running this whole suite (`STACK=modern bash scripts/test.sh`):
pinned (Python <= 3.11: TensorFlow 2.15.1 + tensorflow-addons, Keras 2) and modern (Python 3.12:
TensorFlow 2.16+ with Keras 3, where tensorflow-addons cannot install). Here: the environment is
the stack setup.py selects, the tfa.image ops run on the backend that stack allows, list-ops
offers what the installed Keras offers, and one config runs on either with the same determinism."""
import sys
from importlib import metadata

import keras
import pytest
import tensorflow as tf
from click.testing import CliRunner
from packaging.requirements import Requirement
from packaging.version import Version

from cli import main
from pipeline.errors import UserError
from pipeline.ops import tfa_image
from tests.conftest import assert_accounted, read_outputs, run_job, shard_bytes

MODERN = sys.version_info >= (3, 12)
KERAS_3 = Version(keras.__version__).major >= 3

# Keras 3 image layers that Keras 2 does not have; list-ops must offer them on Keras 3.
NEWER_KERAS_LAYERS = [
    "RandAugment", "AugMix", "RandomShear", "RandomPerspective", "RandomGaussianBlur",
    "RandomErasing", "RandomGrayscale", "RandomHue", "RandomSaturation", "RandomSharpness",
    "RandomColorJitter", "Equalization", "Solarization",
]


def installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_the_environment_is_the_stack_setup_py_selects_for_this_python():
    for requirement in map(Requirement, metadata.requires("augbatch")):
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            version = installed(requirement.name)
            assert version and requirement.specifier.contains(version, prereleases=True), (
                f"{requirement} but {version} is installed")
    if MODERN:
        assert Version(tf.__version__) >= Version("2.16") and KERAS_3
        assert installed("tensorflow-addons") is None
    else:
        assert tf.__version__ == "2.15.1" and not KERAS_3
        assert installed("tensorflow-addons") == "0.23.0"


def test_tfa_ops_run_on_the_backend_the_stack_allows(monkeypatch):
    monkeypatch.delenv(tfa_image.ENV, raising=False)
    if MODERN:
        assert tfa_image.load_backend()[1] == tfa_image.CORE
        with pytest.raises(UserError, match="tensorflow_addons does not import"):
            tfa_image.load_backend("tfa")
    else:
        assert tfa_image.load_backend()[1] == tfa_image.TFA
    assert tfa_image.load_backend("core")[1] == tfa_image.CORE  # on either stack


def test_list_ops_offers_the_layers_of_the_installed_keras():
    result = CliRunner().invoke(main, ["list-ops", "--family", "keras.layers"])
    assert result.exit_code == 0, result.output
    listed = {name for name in NEWER_KERAS_LAYERS if f"keras.layers.{name}  [" in result.output}
    assert listed == {name for name in NEWER_KERAS_LAYERS if hasattr(tf.keras.layers, name)}
    assert listed == (set(NEWER_KERAS_LAYERS) if KERAS_3 else set())


# One config for both stacks: tf.image, tfa.image (tensorflow-addons or its core-TF stand-in) and
# Keras layer ops. On Keras 3 it adds newer layers, RandomPerspective among them, which needs each
# image's size (traced per size, on photos of several sizes).
CHAIN = [
    {"op": "tf.image.random_flip_left_right"},
    {"op": "tfa.image.rotate", "max_degrees": 15},
    {"op": "tfa.image.shear_x", "level": [-0.1, 0.1], "probability": 0.5},
    {"op": "keras.layers.RandomContrast", "factor": 0.3},
    {"op": "keras.layers.RandomTranslation", "height_factor": 0.1, "width_factor": 0.1},
]
if KERAS_3:
    CHAIN += [{"op": "keras.layers.RandomPerspective", "factor": 0.3},
              {"op": "keras.layers.RandomHue", "factor": 0.1}]


def test_one_config_runs_with_the_same_determinism(small_folder, tmp_path):
    manifest = run_job(small_folder, tmp_path / "a", CHAIN, copies=2, seed=5, num_shards=2)
    assert_accounted(manifest)
    assert manifest["counts"]["errored"] == 0
    outputs = read_outputs(tmp_path / "a")
    assert len(outputs) == manifest["counts"]["outputs"] > 0
    # Another batch size groups the images differently; the bytes must not change.
    run_job(small_folder, tmp_path / "b", CHAIN, copies=2, seed=5, num_shards=2, batch_size=1)
    assert shard_bytes(tmp_path / "b") == shard_bytes(tmp_path / "a")
