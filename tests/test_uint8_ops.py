"""The uint8 family: colour ops with 8-bit arithmetic (x * alpha + beta, one rounding), on the
stored pixels where the chain holds them: the pixels against the formula on real photos (the
same whatever the kernel), the same map on floats, the plan that keeps a chain of them in
uint8, the config hash, and whole runs."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli import main
from pipeline import augment, chain
from pipeline.ops import draw, geometry, registry
from tests.conftest import make_job
from tests.test_opencv_kernel import parallel_and_batch_free
from tests.test_performance_paths import photos, seeds_for

NAME = "uint8.random_brightness_contrast"
# Wide ranges: many pixels saturate at both ends.
WIDE = {"contrast": [0.3, 2.0], "brightness": [-0.5, 0.5]}


def op_fn(**params):
    op = registry.get(NAME)
    return op.build(op.resolve(params, "augment.chain[0]"))


def drawn(seeds, params):
    """The op's gain and offset per example, drawn as the op documents: stateless uniforms
    from its seed folded with 0 (gain) and 1 (offset)."""
    seeds = tf.constant(seeds)
    alpha = draw.uniform(draw.fold_in(seeds, 0), *params["contrast"]).numpy()
    beta = draw.uniform(draw.fold_in(seeds, 1), *params["brightness"]).numpy()
    return alpha, beta


def expected(images, alpha, beta):
    """round(x * alpha + 255 beta), half to even, in float32, saturated to 0..255."""
    gamma = (beta * np.float32(255)).astype(np.float32)
    value = images.astype(np.float32) * alpha[:, None, None, None] + gamma[:, None, None, None]
    return np.clip(np.round(value), 0, 255).astype(np.uint8)


def run(kernel, images, seeds, **params):
    with geometry.kernel(kernel):
        return tf.function(op_fn(**params))(images, seeds).numpy()


def test_the_pixels_are_the_rounded_saturated_map_whatever_the_kernel():
    """The formula exactly, with TensorFlow's ops under every kernel (OpenCV's are for
    resampling only)."""
    images, seeds = photos(8, 96, 128), seeds_for(8)
    alpha, beta = drawn(seeds, WIDE)
    assert alpha.min() < 1 < alpha.max() and beta.min() < 0 < beta.max()
    want = expected(images, alpha, beta)
    assert (want == 0).mean() > 0.01 and (want == 255).mean() > 0.01  # both ends saturate
    for kernel in ("tensorflow", "opencv"):
        ours = run(kernel, images, seeds, **WIDE)
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, want, err_msg=kernel)


@pytest.mark.parametrize("channels", [1, 3, 4, 5])
def test_any_number_of_channels(channels):
    images = np.concatenate([photos(3, 40, 48)] * 2, axis=-1)[..., :channels].copy()
    seeds = seeds_for(3)
    np.testing.assert_array_equal(run("opencv", images, seeds, **WIDE),
                                  expected(images, *drawn(seeds, WIDE)))


def test_on_float_pixels_it_is_the_same_map_unrounded():
    """Between float ops it computes clip(x * alpha + beta, 0, 1); stored as augbatch stores
    floats, that is within a level of the uint8 result."""
    images, seeds = photos(4, 40, 48), seeds_for(4)
    alpha, beta = drawn(seeds, WIDE)
    floats = images.astype(np.float32) / np.float32(255)
    out = tf.function(op_fn(**WIDE))(floats, seeds).numpy()
    want = np.clip(floats * alpha[:, None, None, None] + beta[:, None, None, None], 0, 1)
    np.testing.assert_allclose(out, want, atol=1e-6)
    stored = augment.to_uint8(out).numpy().astype(int)
    assert np.abs(stored - expected(images, alpha, beta)).max() <= 1


def test_a_chain_of_it_flips_and_rotations_stays_uint8():
    flip = {"op": "tf.image.random_flip_left_right"}
    colour = {"op": NAME}
    rotate = {"op": "tfa.image.rotate", "max_degrees": 20, "interpolation": "bilinear"}
    saturation = {"op": "tf.image.random_saturation", "lower": 0.5, "upper": 1.5}

    def stages(steps, uint8_geometry):
        return [(kind, start, len(part)) for kind, start, part
                in augment.plan(chain.normalize(steps), False, uint8_geometry)]
    assert stages([flip, colour, rotate], True) == [("uint8", 0, 3)]
    assert stages([flip, colour, rotate], False) == [("uint8", 0, 2), ("plain", 2, 1)]
    assert stages([saturation, colour], True) == [("plain", 0, 1), ("uint8", 1, 1)]
    assert stages([saturation, colour], False) == [("plain", 0, 2)]
    # With XLA on, it is not compiled: it stays on the uint8 pixels, with TensorFlow's ops.
    assert [kind for kind, _, _ in augment.plan(chain.normalize([colour, saturation]), True)] \
        == ["uint8", "xla"]
    # No float32 round trip for the first chain: nothing casts its pixels to float but the
    # op's own multiply-add, which rounds its result back to uint8 at once.
    fn = tf.function(augment.build_chain(chain.normalize([flip, colour, rotate]),
                                         kernel="opencv-uint8"))
    graph = fn.get_concrete_function(tf.TensorSpec([None, 40, 48, 3], tf.uint8),
                                     tf.TensorSpec([None, 2], tf.int32)).graph
    casts = [op.name for op in graph.get_operations() if op.type == "Cast"
             and op.inputs[0].dtype == tf.uint8]
    assert casts and all("uint8_multiply_add/" in name for name in casts), casts
    assert "AugbatchToFloat" not in {op.type for op in graph.get_operations()}


# sample_configs/fast_cpu.yaml's config hash with the op's first version, which computed it with
# OpenCV's addWeighted under an OpenCV kernel (whose roundings differ a little from the formula's).
FAST_CPU_HASH_WITH_ADD_WEIGHTED = "fb1dd3e661223be0"


def test_the_config_hash_tells_the_records_of_opencv_arithmetic_apart(tmp_path):
    from pipeline import config
    job = config.load(os.path.join(os.path.dirname(__file__), "..", "sample_configs",
                                   "fast_cpu.yaml"), require_paths=False)
    assert job.config_hash != FAST_CPU_HASH_WITH_ADD_WEIGHTED
    # The op's pixels are the same whatever the kernel; its hash keeps the TensorFlow
    # kernel's (whose pixels were these all along) and the OpenCV kernels' apart.
    steps = [{"op": "tf.image.random_flip_left_right"}, {"op": NAME}]
    hashes = {kernel: make_job("x", tmp_path, steps, kernel=kernel).config_hash
              for kernel in geometry.KERNELS}
    assert hashes["opencv"] == hashes["opencv-uint8"] != hashes["tensorflow"]
    # Parameters are in the hash too, as for every op.
    other = [steps[0], {"op": NAME, "contrast": [0.9, 1.1]}]
    assert make_job("x", tmp_path, other).config_hash != hashes["opencv-uint8"]


def test_bad_parameters_name_their_path():
    op = registry.get(NAME)
    with pytest.raises(Exception, match=r"augment.chain\[2\].contrast: range low 1.5 is above"):
        op.resolve({"contrast": [1.5, 0.5]}, "augment.chain[2]")
    with pytest.raises(Exception, match=r"augment.chain\[2\].brightness: must be <= 1.0"):
        op.resolve({"brightness": [0.0, 2.0]}, "augment.chain[2]")
    with pytest.raises(Exception, match=r"augment.chain\[2\].gain: unknown parameter"):
        op.resolve({"gain": 2}, "augment.chain[2]")


def test_the_runner_stays_parallel_and_copies_ignore_their_batch():
    images, seeds, whole = parallel_and_batch_free([{"op": NAME, **WIDE}])
    pixels = [tf.io.decode_png(b).numpy() for b in whole]
    # (the chain gives step 0 its seed folded with its place, 0)
    step_seeds = draw.fold_in(tf.constant(seeds), 0).numpy()
    want = expected(np.repeat(images, 2, axis=0), *drawn(step_seeds, WIDE))
    np.testing.assert_array_equal(np.stack(pixels), want)


def test_a_run_writes_what_it_drew_and_the_same_bytes_in_any_batch(small_folder, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "augment:\n  copies: 2\n  chain:\n"
        "    - {op: tf.image.random_flip_left_right}\n"
        f"    - {{op: {NAME}, contrast: [0.7, 1.3], brightness: [-0.2, 0.2]}}\n"
        "    - {op: tfa.image.rotate, max_degrees: 15, interpolation: bilinear}\n"
        "output: {format: png}\n")
    shards = {}
    for batch in (1, 16):
        out = tmp_path / f"out-{batch}"
        result = CliRunner().invoke(main, ["expand", "-c", str(config), "-i", small_folder,
                                           "-o", str(out), "--batch-size", str(batch)])
        assert result.exit_code == 0, result.output
        shards[batch] = [open(p, "rb").read()
                         for p in sorted(glob.glob(str(out / "*.tfrecord*")))]
    assert shards[1] == shards[16] and shards[1]
    records = [tf.train.Example.FromString(r) for r in
               tf.data.TFRecordDataset(sorted(glob.glob(str(tmp_path / "out-1" / "*.tfrecord*"))))
               .as_numpy_iterator()]
    notes = [json.loads(r.features.feature["augment/ops"].bytes_list.value[0])["ops"]
             for r in records]
    drawn_ops = [step for ops in notes for step in ops if step["op"] == NAME]
    assert drawn_ops and all(step["ran"] for step in drawn_ops)
    for step in drawn_ops:
        alpha, beta = step["drew"]
        assert 0.7 <= alpha < 1.3 and -0.2 <= beta < 0.2
    assert len({tuple(step["drew"]) for step in drawn_ops}) == len(drawn_ops)
    assert os.path.exists(tmp_path / "out-1" / "manifest.json")


def test_list_ops_shows_the_family():
    result = CliRunner().invoke(main, ["list-ops", "--family", "uint8"])
    assert result.exit_code == 0, result.output
    assert f"{NAME}  [uint8, random, targets unchanged]" in result.output
    assert "contrast: range = [0.8, 1.2]" in result.output


def test_as_a_keras_layer_it_is_the_same_map_on_floats():
    """In training the chain runs on float pixels: each image comes out as x * alpha + beta
    (in 0..255 here), alpha and beta in their ranges, where nothing saturated."""
    from pipeline.keras_layer import augmentation_layer
    layer = augmentation_layer([{"op": NAME, "contrast": [0.7, 1.3],
                                 "brightness": [-0.2, 0.2]}], seed=3)
    images = photos(4, 32, 40).astype(np.float32)
    out = layer(images, training=True).numpy()
    for x, y in zip(images, out):
        inside = (y > 0.5) & (y < 254.5)
        alpha, beta = np.polyfit(x[inside], y[inside], 1)
        assert 0.7 <= alpha < 1.3 and -0.2 * 255 <= beta < 0.2 * 255, (alpha, beta)
        np.testing.assert_allclose(y[inside], alpha * x[inside] + beta, atol=1e-3)
    assert len({round(float(a), 4) for a in out.reshape(4, -1).mean(1)}) == 4
