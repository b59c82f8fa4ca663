"""The OpenCV resample kernels (runtime.kernel: opencv-uint8, the CPU default, and opencv): the
same draws and the same geometry as TensorFlow's kernel, their pixel difference bounded per op on
real photos, part of the config hash, and no brake on the runner. opencv-uint8 resamples the
stored uint8 pixels where geometric ops start or end the chain."""
import json

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli import main
from pipeline import augment, chain, config
from pipeline.errors import ConfigError
from pipeline.ops import geometry, registry
from tests.conftest import make_job
from tests.test_performance_paths import STANDARD, photos, seeds_for

# A 36 x 52 image: the identity, an affine map at half pixels, a rotation about the centre
# reaching past the border, and a projective one.
TRANSFORMS = np.array([[1, 0, 0, 0, 1, 0, 0, 0],
                       [0.9, -0.3, 14.5, 0.25, 1.1, -9.5, 0, 0],
                       [0.94, -0.34, 10.4, 0.34, 0.94, -7.6, 0, 0],
                       [1.1, 0.2, -6.0, -0.1, 0.9, 4.0, 0.004, -0.003]], np.float32)


def resample(kernel, images, interpolation, fill_mode, fill_value=0.0):
    with geometry.kernel(kernel):
        fn = tf.function(lambda x: geometry.transform(x, TRANSFORMS, interpolation, fill_mode,
                                                      fill_value))
        return fn(images).numpy()


@pytest.mark.parametrize("interpolation", geometry.INTERPOLATIONS)
@pytest.mark.parametrize("fill_mode", geometry.FILL_MODES)
def test_opencv_samples_as_tensorflow_does(interpolation, fill_mode):
    """Same matrices, same pixel centres, same fills: the identity is exact; elsewhere
    OpenCV's 1/32-pixel sample points move a value by a level or so, and nearest sampling
    picks the neighbour on a tie (0.3% of the pixels here, at half-pixel offsets).
    TensorFlow's 'wrap' has its own seam (it divides by size - 1): a border strip differs."""
    images = photos(4, 36, 52)
    for x, fill, levels in ((images, 128.0, 1.0), (images / np.float32(255), 0.5, 255.0)):
        ours, ref = (resample(kernel, x, interpolation, fill_mode, fill).astype(np.float64)
                     * levels for kernel in ("opencv", "tensorflow"))
        assert ours.shape == x.shape
        np.testing.assert_array_equal(ours[0], ref[0])  # the identity
        diff = np.abs(ours - ref)
        seam = fill_mode == "wrap"
        # (On uint8, TensorFlow's bilinear truncates and OpenCV rounds: a third of a level.)
        assert diff.mean() < (0.8 if seam else 0.4), (x.dtype, diff.mean())
        assert (diff > 2.5).mean() < (0.03 if seam else 0.005), (x.dtype, (diff > 2.5).mean())


def test_opencv_takes_any_number_of_channels():
    images = photos(4, 24, 32)
    for channels in (1, 3, 5):
        x = np.concatenate([images] * 2, axis=-1)[..., :channels].astype(np.float32) / 255
        ours = resample("opencv", x, "bilinear", "reflect")
        ref = resample("tensorflow", x, "bilinear", "reflect")
        assert ours.shape == x.shape
        assert np.abs(ours - ref).max() < 3 / 255


def geometric_ops():
    for name, op in registry.all_ops().items():
        steps = chain.normalize([dict(op=name, **(op.test_params or {}))],
                                allow_python_ops=True)
        if isinstance(op.build(steps[0]["params"]), geometry.Projective):
            yield name, steps


@pytest.mark.parametrize("name,steps", list(geometric_ops()), ids=lambda v: str(v)[:30])
def test_every_geometric_op_stays_close_to_the_tensorflow_kernel(name, steps):
    """Per op, on real photos, through the runner's chain: the draws are TensorFlow's either
    way; the pixels differ by a tenth to a fifth of a level on average (on uint8 OpenCV rounds
    a blend where TensorFlow's float32 path, stored, truncates it), rarely by more than two
    (nearest sampling can pick the neighbour on a tie: a few pixels in ten thousand)."""
    images, seeds = photos(6, 48, 64), seeds_for(6)
    out = {kernel: tf.function(augment.build_chain(steps, kernel=kernel))(images, seeds)
           .numpy().astype(int) for kernel in geometry.KERNELS}
    for kernel in ("opencv", "opencv-uint8"):
        diff = np.abs(out[kernel] - out["tensorflow"])
        assert diff.mean() < (0.25 if kernel == "opencv" else 0.3), (kernel, diff.mean())
        assert (diff > 2).mean() < 0.003, (kernel, (diff > 2).mean())


def test_the_uint8_kernel_resamples_the_pixels_as_stored():
    """Brightness +0.4 pushes bright pixels past white, then a shift of 3.5 pixels blends each
    pair of neighbours half and half. opencv-uint8 blends the stored (clipped) values, as a
    uint8 pipeline does; opencv and tensorflow blend the float32 values, then clip."""
    images = photos(2, 40, 48)
    images[:, :, ::2] = 255  # white every other column: bright pairs (a photo is smooth)
    steps = chain.normalize([{"op": "tf.image.adjust_brightness", "delta": 0.4},
                             {"op": "tfa.image.translate", "dx": [3.5, 3.5],
                              "interpolation": "bilinear", "fill_value": 0.5}])
    out = {kernel: tf.function(augment.build_chain(steps, kernel=kernel))(
        images, seeds_for(2)).numpy().astype(int) for kernel in geometry.KERNELS}
    brighter = images / np.float32(255) + np.float32(0.4)
    stored = np.floor(np.clip(brighter, 0, 1) * 255.5).astype(int)
    as_stored = (stored[:, :, :-4] + stored[:, :, 1:-3] + 1) // 2  # OpenCV rounds a half up
    as_float = np.floor(np.clip((brighter[:, :, :-4] + brighter[:, :, 1:-3]) / 2, 0, 1) * 255.5)
    np.testing.assert_array_equal(out["opencv-uint8"][:, :, 4:], as_stored)
    assert (out["opencv-uint8"][:, :, :3] == 127).all()  # the fill 0.5, as augbatch stores it
    for kernel in ("opencv", "tensorflow"):
        assert np.abs(out[kernel][:, :, 4:] - as_float).max() <= 1, kernel
        assert (out[kernel][:, :, :3] == 127).all()
    # Where a blend takes a pixel past white, the two differ (up to 0.4 / 2 of the range).
    assert np.abs(as_stored - as_float).max() > 20


def test_the_uint8_kernel_takes_geometric_ops_at_either_end_of_the_chain():
    rotate = {"op": "tfa.image.rotate", "max_degrees": 20, "interpolation": "bilinear"}
    flip = {"op": "tf.image.random_flip_left_right"}
    brightness = {"op": "tf.image.random_brightness", "max_delta": 0.2}
    with_finish = {"op": "idg", "rotation_range": 10, "brightness_range": [0.8, 1.2]}
    steps = chain.normalize([rotate, flip, brightness, rotate, with_finish, rotate, flip])

    def stages(uint8_geometry):
        return [(kind, start, len(part))
                for kind, start, part in augment.plan(steps, False, uint8_geometry)]
    assert stages(True) == [("uint8", 0, 2), ("plain", 2, 3), ("uint8", 5, 2)]
    assert stages(False) == [("plain", 0, 7)]  # (rotate is not exact on uint8)
    # A chain without geometry gives the same bytes whatever the kernel (and the same hash).
    colour = chain.normalize([flip, brightness, flip])
    images, seeds = photos(3, 24, 32), seeds_for(3)
    outs = [tf.function(augment.build_chain(colour, kernel=kernel))(images, seeds).numpy()
            for kernel in geometry.KERNELS]
    assert all((out == outs[0]).all() for out in outs)


def test_the_kernel_is_opencv_only_on_the_cpu_without_xla():
    for kernel in ("opencv-uint8", "opencv"):
        assert augment.resample_kernel(kernel) == "opencv"
        assert augment.resample_kernel(kernel, xla=True) == "tensorflow"
        assert augment.resample_kernel(kernel, on_cpu=False) == "tensorflow"
    assert augment.resample_kernel("tensorflow") == "tensorflow"


def test_the_kernel_is_in_the_config_hash_and_tensorflow_keeps_the_old_one(tmp_path):
    assert make_job("x", tmp_path, STANDARD).kernel == "opencv-uint8"
    hashes = {make_job("x", tmp_path, STANDARD, kernel=kernel).config_hash
              for kernel in geometry.KERNELS}
    assert len(hashes) == 3
    colour = [{"op": "tf.image.random_brightness", "max_delta": 0.1}]  # no resample: no change
    assert len({make_job("x", tmp_path, colour, kernel=kernel).config_hash
                for kernel in geometry.KERNELS}) == 1
    # With XLA the geometric ops are compiled: the kernel setting changes nothing.
    assert len({make_job("x", tmp_path, STANDARD, xla=True, kernel=kernel).config_hash
                for kernel in geometry.KERNELS}) == 1


def test_kernel_in_the_config_and_on_the_command_line(small_folder, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: in\noutput: out\naugment: {copies: 0}\n"
                    "runtime: {kernel: tensorflow}\n")
    assert config.load(str(path)).kernel == "tensorflow"
    path.write_text("input: in\noutput: out\nruntime: {kernel: cv2}\n")
    with pytest.raises(ConfigError, match="runtime.kernel: expected one of opencv-uint8, opencv, tensorflow"):
        config.load(str(path))
    path.write_text("augment:\n  chain: [{op: tfa.image.rotate, max_degrees: 20}]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["expand", "-c", str(path), "-i", small_folder, "-o",
                                       str(out), "--copies", "1", "--kernel", "tensorflow"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] == config.load(
        str(path), {"input": (small_folder,), "output": str(out), "copies": 1,
                    "kernel": "tensorflow"}).config_hash


def parallel_and_batch_free(steps, call=None, **fields):
    """The runner stays parallel (Python in the graph makes it go one call at a time, except
    OpenCV's: `call`, the name of its numpy_function, which never calls TensorFlow back; with
    no `call`, the graph calls no Python at all); copies alone and in batches give the same
    bytes. -> (3 photos, 6 seeds, their 6 copies as PNGs)."""
    runner = augment.ChainRunner(make_job("x", "y", steps, copies=2, **fields))
    assert runner.in_flight == augment.IN_FLIGHT
    graph = str(runner._augment_encode.graph.as_graph_def())
    assert call in graph if call else "PyFunc" not in graph
    images, seeds = photos(3, 40, 48), seeds_for(6)
    whole = runner.augment_encode(images, seeds, ["png"] * 6)[0]
    alone = [b for i in range(3) for b in runner.augment_encode(
        images[i:i + 1], seeds[2 * i:2 * i + 2], ["png"] * 2)[0]]
    assert whole == alone
    return images, seeds, whole


def test_the_opencv_kernel_keeps_the_runner_parallel_and_deterministic():
    """On float32 images the warp is OpenCV's own, through a numpy_function."""
    parallel_and_batch_free(STANDARD, "opencv_warp", kernel="opencv")
