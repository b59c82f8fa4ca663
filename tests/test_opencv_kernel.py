"""The OpenCV resample kernel (runtime.kernel: opencv, the CPU default): the same draws and the
same geometry as TensorFlow's kernel, its pixel difference bounded per op on real photos, part of
the config hash, and no brake on the runner."""
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
    way; the pixels differ by about a tenth of a level on average, rarely by more than two
    (nearest sampling can pick the neighbour on a tie: a few pixels in ten thousand)."""
    images, seeds = photos(6, 48, 64), seeds_for(6)
    out = {kernel: tf.function(augment.build_chain(steps, kernel=kernel))(images, seeds)
           .numpy().astype(int) for kernel in geometry.KERNELS}
    diff = np.abs(out["opencv"] - out["tensorflow"])
    assert diff.mean() < 0.25, diff.mean()
    assert (diff > 2).mean() < 0.003, (diff > 2).mean()


def test_the_kernel_is_opencv_only_on_the_cpu_without_xla():
    assert augment.resample_kernel("opencv") == "opencv"
    assert augment.resample_kernel("opencv", xla=True) == "tensorflow"
    assert augment.resample_kernel("opencv", on_cpu=False) == "tensorflow"
    assert augment.resample_kernel("tensorflow") == "tensorflow"


def test_the_kernel_is_in_the_config_hash_and_tensorflow_keeps_the_old_one(tmp_path):
    default = make_job("x", tmp_path, STANDARD)
    tf_kernel = make_job("x", tmp_path, STANDARD, kernel="tensorflow")
    assert default.kernel == "opencv" and default.config_hash != tf_kernel.config_hash
    colour = [{"op": "tf.image.random_brightness", "max_delta": 0.1}]  # no resample: no change
    assert (make_job("x", tmp_path, colour).config_hash
            == make_job("x", tmp_path, colour, kernel="tensorflow").config_hash)
    # With XLA the geometric ops are compiled: the kernel setting changes nothing.
    assert make_job("x", tmp_path, STANDARD, xla=True).config_hash == make_job(
        "x", tmp_path, STANDARD, xla=True, kernel="tensorflow").config_hash


def test_kernel_in_the_config_and_on_the_command_line(small_folder, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: in\noutput: out\naugment: {copies: 0}\n"
                    "runtime: {kernel: tensorflow}\n")
    assert config.load(str(path)).kernel == "tensorflow"
    path.write_text("input: in\noutput: out\nruntime: {kernel: cv2}\n")
    with pytest.raises(ConfigError, match="runtime.kernel: expected one of opencv, tensorflow"):
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


def test_the_opencv_kernel_keeps_the_runner_parallel_and_deterministic():
    """Python in the graph makes a runner go one call at a time, except this kernel's, which
    never calls TensorFlow back; copies alone and in batches give the same bytes."""
    job = make_job("x", "y", STANDARD, copies=2)
    runner = augment.ChainRunner(job)
    assert runner.in_flight == augment.IN_FLIGHT
    assert "opencv_warp" in str(runner._augment_encode.graph.as_graph_def())
    images, seeds = photos(3, 40, 48), seeds_for(6)
    whole = runner.augment_encode(images, seeds, ["png"] * 6)[0]
    alone = [b for i in range(3) for b in runner.augment_encode(
        images[i:i + 1], seeds[2 * i:2 * i + 2], ["png"] * 2)[0]]
    assert whole == alone
