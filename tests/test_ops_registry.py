"""Every registered op, of every family, run on real photos: shapes, finite values, determinism,
randomness and batch independence. An op registered without `test_params` fails here.
Bad parameters give ConfigErrors naming the config path, and exit code 2 through the CLI."""
import os

import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from cli import main
from pipeline import chain
from pipeline.errors import ConfigError
from pipeline.ops import registry
from tests.conftest import SAMPLE_IMAGES, decode_file, real_photo

OPS = registry.all_ops()
HEIGHT, WIDTH = 32, 48
# The signature the pipeline traces the chain with: batch, height and width unknown.
SIGNATURE = [tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([None, 2], tf.int32)]


def colour_photo(height=HEIGHT, width=WIDTH):
    """A colourful sample photo (real_photo() is greyscale, where hue and saturation ops
    change nothing), float32 [1, H, W, 3] in [0, 1]."""
    image = decode_file(os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg"))
    image = tf.image.resize(image[None].astype(np.float32) / 255.0, (height, width))
    return tf.clip_by_value(image, 0.0, 1.0)


@pytest.fixture(scope="module")
def photos():
    """Two different real photos, colour then grey, float32 [2, 32, 48, 3] in [0, 1]."""
    return tf.concat([colour_photo(), real_photo(HEIGHT, WIDTH)], 0)


def test_every_family_has_ops_and_every_op_has_test_params():
    families = {op.family for op in OPS.values()}
    assert {"tf.image", "keras.layers", "python"} <= families
    missing = sorted(name for name, op in OPS.items() if op.test_params is None)
    assert not missing, f"ops without test_params: {missing}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_contract(name, photos):
    op = OPS[name]
    assert op.test_params is not None, f"{name} has no test_params"
    fn = tf.function(op.build(op.resolve(op.test_params, "augment.chain[0]")),
                     input_signature=SIGNATURE)
    seeds = tf.constant([[11, -12], [13, 14]], tf.int32)

    out = fn(photos, seeds)
    assert out.dtype == tf.float32 and out.shape.rank == 4
    assert out.shape[0] == 2 and out.shape[3] == 3
    if op.keeps_shape:
        assert out.shape[1:3] == (HEIGHT, WIDTH)
    assert np.isfinite(out.numpy()).all()

    # Same seeds, same output.
    np.testing.assert_array_equal(out, fn(photos, seeds))
    # Each example's output is its own: the batch of two equals the two run alone.
    for i in range(2):
        np.testing.assert_array_equal(out[i], fn(photos[i:i + 1], seeds[i:i + 1])[0])
    # A random op gives different outputs for different seeds (one image, eight seeds).
    if op.random:
        many = fn(tf.repeat(photos[:1], 8, axis=0),
                  tf.constant([[s, 7 * s + 1] for s in range(8)], tf.int32)).numpy()
        assert any(not np.array_equal(many[0], other) for other in many[1:])


# --- bad parameters ----------------------------------------------------------------------------

BAD_STEPS = [
    ({"op": "tf.image.random_brightnes", "max_delta": 0.2}, "augment.chain[0].op",
     "did you mean 'tf.image.random_brightness'"),
    ({"op": "tf.image.random_brightness", "max_detla": 0.2}, "augment.chain[0].max_detla",
     "did you mean 'max_delta'"),
    ({"op": "tf.image.random_brightness", "max_delta": "lots"}, "augment.chain[0].max_delta",
     "expected a number"),
    ({"op": "tf.image.random_brightness", "max_delta": 3}, "augment.chain[0].max_delta",
     "must be <= 1.0"),
    ({"op": "tf.image.stateless_random_contrast", "lower": 1.5, "upper": 0.5},
     "augment.chain[0]", "lower must not exceed upper"),
    ({"op": "tf.image.stateless_random_crop", "size": [24, "wide"]}, "augment.chain[0]",
     "size: expected [height, width]"),
    ({"op": "keras.layers.RandomRotation", "factr": 0.1}, "augment.chain[0].factr",
     "did you mean 'factor'"),
    ({"op": "keras.layers.RandomRotation"}, "augment.chain[0].factor", "required"),
    ({"op": "keras.layers.RandomContrast", "factor": 2.0}, "augment.chain[0]",
     "RandomContrast refused these arguments"),
    ({"op": "keras.layers.RandomFlip", "mode": "sideways"}, "augment.chain[0].mode",
     "expected one of ['horizontal', 'vertical', 'horizontal_and_vertical']"),
    ({"op": "keras.layers.RandomFlip", "seed": 3}, "augment.chain[0].seed",
     "draws come from augment.seed"),
    ({"op": "keras.layers.RandomBrightness", "factor": 0.2, "value_range": [0, 1]},
     "augment.chain[0].value_range", "[0, 255]"),
    ({"op": "python", "function": "tests.user_ops:salt_and_pepper"}, "augment.chain[0].op",
     "--allow-python-ops"),
]


@pytest.mark.parametrize("step,path,words", BAD_STEPS, ids=[b[1] + ":" + b[2] for b in BAD_STEPS])
def test_bad_parameters_name_the_config_path(step, path, words):
    with pytest.raises(ConfigError) as error:
        chain.normalize([step])
    assert error.value.path == path
    assert words in str(error.value)


@pytest.mark.parametrize("function,words", [
    ("tests.user_ops:salt_and_peper", "did you mean 'salt_and_pepper'"),
    ("no_such_package.ops:noise", "cannot import module 'no_such_package.ops'"),
    ("tests.user_ops", "expected 'package.module:function'"),
    ("tests.user_ops:NOT_A_FUNCTION", "is not a function"),
])
def test_python_function_is_checked_when_allowed(function, words):
    with pytest.raises(ConfigError) as error:
        chain.normalize([{"op": "python", "function": function}], allow_python_ops=True)
    assert error.value.path == "augment.chain[0]"
    assert function in str(error.value) and words in str(error.value)


def _config(tmp_path, step):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"input": "in", "output": "out",
                                    "augment": {"copies": 1, "chain": [step]}}))
    return str(path)


@pytest.mark.parametrize("step,path,words", [BAD_STEPS[i] for i in (1, 3, 6, 10, 12)])
def test_cli_validate_exits_2_without_traceback(tmp_path, step, path, words):
    result = CliRunner().invoke(main, ["validate", _config(tmp_path, step)])
    assert result.exit_code == 2, result.output
    assert f"error: {path}:" in result.output and words in result.output
    assert "Traceback" not in result.output


def test_cli_validate_accepts_python_op_with_the_flag(tmp_path):
    config = _config(tmp_path, {"op": "python", "function": "tests.user_ops:salt_and_pepper"})
    assert CliRunner().invoke(main, ["validate", config]).exit_code == 2
    result = CliRunner().invoke(main, ["validate", config, "--allow-python-ops"])
    assert result.exit_code == 0, result.output
    assert "valid (1 op," in result.output


def test_list_ops_shows_every_family():
    result = CliRunner().invoke(main, ["list-ops"])
    assert result.exit_code == 0, result.output
    for name, op in OPS.items():
        assert f"{name}  [{op.family}," in result.output
    keras = CliRunner().invoke(main, ["list-ops", "--family", "keras.layers"]).output
    assert "keras.layers.RandomRotation" in keras and "fill_mode: str = 'reflect'" in keras
    assert "tf.image." not in keras
