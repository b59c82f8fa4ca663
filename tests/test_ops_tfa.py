"""tfa.image ops on real photos: the op contract on every backend this stack has, agreement with
tensorflow-addons itself, and the same pixels from the core-TF fallback backend.

The reference is tensorflow-addons where it imports; on stacks where it does not (TF >= 2.16)
the ops run on core TF and the reference is its core-TF twin, pipeline.ops.tfa_core, which
tests/test_tfa_core.py proves against tfa on the pinned stack.
"""
import glob
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import UserError
from pipeline.ops import draw, registry, tfa_core, tfa_image
from tests.conftest import SAMPLE_IMAGES, decode_file

try:
    LIB = tfa_image.load_backend("tfa")[0]  # the reference: tfa.image itself
    HAS_TFA = True
except UserError:
    LIB, HAS_TFA = tfa_core, False
BACKENDS = [tfa_image.TFA, tfa_image.CORE] if HAS_TFA else [tfa_image.CORE]

OPS = registry.all_ops("tfa.image")
SEEDS = tf.constant([[11, 12], [-3, 40]], tf.int32)
OTHER_SEEDS = tf.constant([[5, 6], [7, 8]], tf.int32)


def photos(count=2, height=48, width=64):
    """`count` different real sample photos, float32 [count, H, W, 3] in [0, 1]."""
    paths = sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*", "*.jpg")))[:count]
    images = [tf.image.resize(decode_file(p).astype(np.float32) / 255.0, (height, width))
              for p in paths]
    return tf.clip_by_value(tf.stack(images), 0.0, 1.0)


IMAGES = photos()


def build(op_name, params, backend=BACKENDS[0]):
    """The op built as a config would (params resolved and checked), traced as the pipeline
    runs it: fn(images, seeds) -> numpy."""
    op = registry.get(op_name)
    resolved = op.resolve(params, "test")
    with tfa_image.backend(backend):
        fn = tf.function(op.build(resolved))
    return lambda images, seeds: fn(images, seeds).numpy()


def run(op_name, params, images=IMAGES, seeds=SEEDS, backend=BACKENDS[0]):
    return build(op_name, params, backend)(images, seeds)


def assert_matches(ours, reference, name=""):
    """Equal up to float32 rounding: our ops run traced, where grappler rewrites some
    arithmetic (x / 255 becomes x * (1 / 255)), so an eager reference can differ in the last
    bit. Bit-exactness is shown for rotate, with both sides traced."""
    np.testing.assert_allclose(ours, np.clip(reference, 0.0, 1.0), rtol=0, atol=2e-6,
                               err_msg=name)


def assert_matches_levels(ours, reference, name=""):
    """For ops that round to 8-bit levels (blend, sharpness): grappler may fold the 0-255
    scaling into tfa's factor (x * 255 * f -> x * (255 f)), moving a value across .5, so a few
    pixels can land one level away."""
    diff = np.abs(ours - np.clip(reference, 0.0, 1.0))
    assert diff.max() <= 1 / 255 + 1e-6, name
    assert (diff > 2e-6).mean() < 0.005, name


def test_family_has_the_ops_the_docs_promise():
    expected = {"rotate", "transform", "translate", "translate_xy", "shear_x", "shear_y",
                "gaussian_filter2d", "mean_filter2d", "median_filter2d", "cutout",
                "random_cutout", "equalize", "sharpness", "random_hsv_in_yiq",
                "adjust_hsv_in_yiq", "blend", "elastic_distortion"}
    assert {name.split(".")[-1] for name in OPS} == expected


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_contract_on_each_backend(name):
    """Valid shape/dtype/range, reproducible per seed, seed-dependent if random, and (with tfa)
    the core-TF fallback gives the tfa backend's pixels."""
    op = OPS[name]
    fn = build(name, op.test_params)
    out = fn(IMAGES, SEEDS)
    assert out.shape == tuple(IMAGES.shape) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, IMAGES.numpy()), "the op changed nothing"
    np.testing.assert_array_equal(fn(IMAGES, SEEDS), out)
    if op.random:
        other = fn(IMAGES, OTHER_SEEDS)
        for i in range(len(out)):
            assert not np.array_equal(other[i], out[i]), f"example {i} ignores its seed"
    if len(BACKENDS) > 1:
        core = run(name, op.test_params, backend=tfa_image.CORE)
        # Exact, except adjust_hsv_in_yiq: tfa's C++ kernel and a matmul round differently.
        np.testing.assert_allclose(core, out, rtol=0, atol=1e-6)


def test_defaults_are_what_a_config_value_would_resolve_to():
    """An op built from defaults gets values of the same form as given ones ([low, high])."""
    for op in list(OPS.values()) + [registry.get("idg")]:
        for param in op.params:
            if not param.required and param.default is not None:
                assert param.check(param.default, "x") == param.default, (op.name, param.name)


def test_example_output_does_not_depend_on_the_batch():
    alone = run("tfa.image.rotate", {"max_degrees": 30, "interpolation": "bilinear"},
                images=IMAGES[1:], seeds=SEEDS[1:])
    batched = run("tfa.image.rotate", {"max_degrees": 30, "interpolation": "bilinear"})
    np.testing.assert_array_equal(alone[0], batched[1])


# --- agreement with tensorflow-addons ----------------------------------------------------------

def tfa_rotate(images, angles, **kwargs):
    """The library's rotate, traced, with the angles as a runtime tensor like ours: a Python angle
    would be constant-folded by grappler, whose cos/sin can differ from the runtime's in the
    last bit (outputs then differ by up to ~1e-6)."""
    return tf.function(lambda a: LIB.rotate(images, a, **kwargs))(
        tf.constant(angles, tf.float32)).numpy()


def test_fixed_rotation_is_tfa_rotate_exactly():
    for interpolation, fill_mode in (("nearest", "constant"), ("bilinear", "reflect")):
        ours = run("tfa.image.rotate", {"degrees": [25, 25], "interpolation": interpolation,
                                        "fill_mode": fill_mode, "fill_value": 0.5})
        ref = tfa_rotate(IMAGES, [math.radians(25)] * 2, interpolation=interpolation,
                         fill_mode=fill_mode, fill_value=0.5)
        np.testing.assert_array_equal(ours, ref)


def test_rotation_angles_are_drawn_per_example_in_one_batched_call():
    ours = run("tfa.image.rotate", {"max_degrees": 40, "interpolation": "bilinear"})
    angles = draw.uniform(SEEDS, math.radians(-40), math.radians(40)).numpy()
    assert abs(angles[0] - angles[1]) > 1e-3
    np.testing.assert_array_equal(ours, tfa_rotate(IMAGES, angles, interpolation="bilinear"))


def test_fixed_geometry_matches_tfa_functions():
    image = IMAGES[0]
    cases = [
        ("tfa.image.translate", {"dx": 5.5, "dy": -3, "fill_mode": "wrap"},
         LIB.translate(image, [5.5, -3], fill_mode="wrap")),
        ("tfa.image.translate", {"dx": 0.25, "dy": 0.5, "units": "fraction"},
         LIB.translate(image, [16, 24])),
        ("tfa.image.translate_xy", {"dx": 7, "dy": 4, "replace": 0.25},
         LIB.translate_xy(image, [7, 4], 0.25)),
        ("tfa.image.shear_x", {"level": 0.3, "replace": 0.5}, LIB.shear_x(image, 0.3, 0.5)),
        ("tfa.image.shear_y", {"level": -0.2}, LIB.shear_y(image, -0.2, 0.0)),
        ("tfa.image.transform", {"transforms": [1, 0.1, -3, 0.05, 1, 2, 0.001, 0]},
         LIB.transform(image, [1, 0.1, -3, 0.05, 1, 2, 0.001, 0])),
    ]
    for name, params, ref in cases:
        assert_matches(run(name, params, IMAGES[:1], SEEDS[:1])[0], ref.numpy(), name)


def test_filters_and_colour_ops_match_tfa():
    x, x255 = IMAGES, IMAGES * 255.0
    cases = [
        ("tfa.image.gaussian_filter2d", {"filter_shape": [5, 3], "sigma": 1.5},
         LIB.gaussian_filter2d(x, (5, 3), 1.5)),
        ("tfa.image.mean_filter2d", {"filter_shape": 5, "padding": "CONSTANT",
                                     "constant_values": 0.5},
         LIB.mean_filter2d(x, 5, "CONSTANT", 0.5)),
        ("tfa.image.median_filter2d", {"filter_shape": 3}, LIB.median_filter2d(x, 3)),
        ("tfa.image.cutout", {"mask_size": [10, 16], "offset": [20, 30], "constant_values": 1},
         LIB.cutout(x, [10, 16], [20, 30], 1.0)),
        ("tfa.image.equalize", {}, LIB.equalize(tf.round(x255)) / 255.0),
        ("tfa.image.sharpness", {"factor": 2.0}, LIB.sharpness(x255, 2.0) / 255.0),
        ("tfa.image.adjust_hsv_in_yiq", {"delta_hue": 0.4, "scale_saturation": 0.7},
         LIB.adjust_hsv_in_yiq(x, 0.4, 0.7, 1.0)),
        ("tfa.image.blend", {"target": "black", "factor": 0.6},
         LIB.blend(tf.zeros_like(x), x255, 0.6) / 255.0),
    ]
    for name, params, ref in cases:
        check = assert_matches_levels if name in ("tfa.image.blend", "tfa.image.sharpness") \
            else assert_matches
        check(run(name, params), ref.numpy(), name)


def test_drawn_sigma_and_factor_match_tfa_per_example():
    sigmas = draw.uniform(SEEDS, 0.5, 3.0).numpy()
    blurred = run("tfa.image.gaussian_filter2d", {"filter_shape": 7, "sigma": [0.5, 3.0]})
    factors = draw.uniform(SEEDS, 0.0, 3.0).numpy()
    sharpened = run("tfa.image.sharpness", {"factor": [0.0, 3.0]})
    for i in range(len(SEEDS)):
        assert_matches(blurred[i], LIB.gaussian_filter2d(IMAGES[i], 7, float(sigmas[i])))
        ref = LIB.sharpness(IMAGES[i] * 255.0, float(factors[i])) / 255.0
        assert_matches_levels(sharpened[i], ref.numpy())


def test_random_cutout_draws_a_box_inside_each_image():
    out = run("tfa.image.random_cutout", {"mask_size": [10, 14], "constant_values": 1.0},
              tf.zeros([2, 48, 64, 3]))
    centres = []
    for image in out:
        rows, cols = np.nonzero(image[..., 0] == 1.0)
        assert len(rows) == 10 * 14
        assert rows.min() >= 0 and rows.max() < 48 and cols.min() >= 0 and cols.max() < 64
        centres.append((rows.min(), cols.min()))
    assert centres[0] != centres[1]


# --- backend selection ------------------------------------------------------------------------

def test_backend_follows_the_environment_variable(monkeypatch):
    monkeypatch.setenv(tfa_image.ENV, "core")
    assert tfa_image.load_backend() == (tfa_core, tfa_image.CORE)
    monkeypatch.setenv(tfa_image.ENV, "")  # automatic: tfa where it imports
    assert tfa_image.load_backend()[1] == tfa_image.BACKEND
    monkeypatch.setenv(tfa_image.ENV, "tfa")
    if HAS_TFA:
        assert tfa_image.load_backend() == (LIB, tfa_image.TFA)
    else:
        with pytest.raises(UserError, match="does not import"):
            tfa_image.load_backend()
    monkeypatch.setenv(tfa_image.ENV, "addons-please")
    with pytest.raises(UserError, match="AUGBATCH_TFA_BACKEND"):
        tfa_image.load_backend()


def test_list_ops_says_which_backend_runs_the_ops():
    from click.testing import CliRunner

    from cli import main
    output = CliRunner().invoke(main, ["list-ops", "--family", "tfa.image"]).output
    assert f"tfa.image ops run on {tfa_image.BACKEND}" in output


def test_bad_params_are_config_errors_naming_the_path():
    from pipeline import chain
    from pipeline.errors import ConfigError
    bad = [({"op": "tfa.image.rotate"}, "exactly one of"),
           ({"op": "tfa.image.rotate", "degrees": 10, "radians": 1}, "exactly one of"),
           ({"op": "tfa.image.random_cutout", "mask_size": 15}, "even"),
           ({"op": "tfa.image.transform", "transforms": [1, 0, 0]}, "8 numbers"),
           ({"op": "tfa.image.gaussian_filter2d", "sigma": 0}, "above 0"),
           ({"op": "tfa.image.rotate", "max_degrees": 10, "fill_mode": "mirror"}, "one of")]
    for step, message in bad:
        with pytest.raises(ConfigError, match=message) as error:
            chain.normalize([step])
        assert error.value.path.startswith("augment.chain[0]")
