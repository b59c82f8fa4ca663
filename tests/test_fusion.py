"""Fusion of consecutive geometric ops into one resample (pipeline.ops.geometry, chain.build)."""
import numpy as np
import tensorflow as tf

from pipeline import chain
from pipeline.ops import draw, geometry, tfa_image
from tests.conftest import assert_accounted, read_outputs, real_photo, run_job

SQUARE = tf.concat([real_photo(48, 48), tf.image.flip_up_down(real_photo(48, 48))], 0)
SEEDS = tf.constant([[1, 2], [3, 4]], tf.int32)


def chain_fns(steps):
    """The step functions chain.build fuses, built from a config chain."""
    return [chain._build_step(step) for step in chain.normalize(steps)]


def run_chain(steps, images, seeds=SEEDS, fuse=True):
    return tf.function(chain.build(chain.normalize(steps), fuse=fuse))(images, seeds).numpy()


def test_runs_join_consecutive_ops_that_resample_alike():
    fns = chain_fns([
        {"op": "tfa.image.rotate", "max_degrees": 10},                      # nearest, constant 0
        {"op": "tfa.image.translate", "dx": [-3, 3], "probability": 0.5},   # same
        {"op": "tfa.image.shear_x", "level": [-0.1, 0.1]},                  # same (replace 0)
        {"op": "tfa.image.rotate", "max_degrees": 10, "interpolation": "bilinear"},
        {"op": "idg", "horizontal_flip": True, "channel_shift_range": 10.0},  # bilinear, nearest
        {"op": "tfa.image.translate", "dx": 2, "interpolation": "bilinear",
         "fill_mode": "nearest"},   # same sampling as idg, but idg's pixel work ends the run
        {"op": "tf.image.adjust_brightness", "delta": 0.1},
        {"op": "tfa.image.rotate", "max_degrees": 10},
    ])
    runs = [[index for index, _ in run] for run in geometry.fuse_runs(fns)]
    assert runs == [[0, 1, 2], [3], [4], [5], [6], [7]]


def test_fused_run_is_one_transform_by_the_product_of_each_ops_own_draws():
    steps = [{"op": "tfa.image.rotate", "max_degrees": 30, "interpolation": "bilinear"},
             {"op": "tfa.image.translate", "dx": [-5, 5], "dy": [-0.1, 0.1], "units": "fraction",
              "interpolation": "bilinear"},
             {"op": "idg", "rotation_range": 20, "zoom_range": 0.2, "horizontal_flip": True,
              "fill_mode": "constant"}]
    fns = chain_fns(steps)
    assert len(geometry.fuse_runs(fns)) == 1
    # Each op's matrix from its own seed, the one it gets unfused: fold_in(seeds, position).
    products = np.tile(np.eye(3), [2, 1, 1])
    for index, fn in enumerate(fns):
        flat = fn.projective(draw.fold_in(SEEDS, index), 48.0, 48.0).numpy()
        products = products @ np.concatenate([flat, np.ones([2, 1])], 1).reshape(-1, 3, 3)
    expected = geometry.transform(SQUARE, (products.reshape(-1, 9) / products[:, 2:, 2])[:, :8],
                                  "bilinear").numpy()
    np.testing.assert_allclose(run_chain(steps, SQUARE), expected, rtol=0, atol=1e-4)


def test_fused_equals_one_by_one_wherever_no_fill_came_in():
    """Nearest sampling and whole-pixel transforms (quarter turns, integer shifts, flips) so
    one-by-one is exact too; they agree on every pixel that one-by-one did not fill."""
    steps = [{"op": "tfa.image.rotate", "degrees": [90, 90]},
             {"op": "idg", "width_shift_range": 6, "height_shift_range": 4,
              "horizontal_flip": True, "vertical_flip": True, "fill_mode": "constant",
              "interpolation_order": 0},
             {"op": "tfa.image.transform", "transforms": [1, 0, -3, 0, 1, 2, 0, 0]},
             {"op": "tfa.image.rotate", "degrees": [-90, -90], "probability": 0.5}]
    assert len(geometry.fuse_runs(chain_fns(steps))) == 1
    seeds = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8]], tf.int32)
    images = tf.concat([SQUARE, SQUARE[::-1]], 0)
    fused = run_chain(steps, images, seeds)
    one_by_one = run_chain(steps, images, seeds, fuse=False)
    untouched = run_chain(steps, tf.ones_like(images), seeds, fuse=False) == 1.0
    assert untouched.mean() > 0.6
    np.testing.assert_array_equal(fused[untouched], one_by_one[untouched])
    # Where one-by-one shows an earlier op's fill, the fused op can still show real pixels.
    assert (fused > 0).mean() >= (one_by_one > 0).mean()


def test_fused_bilinear_resamples_once():
    """A turn and its inverse: fused, one resample by (almost) the identity gives the photo
    back; one by one, bilinear blurs twice."""
    steps = [{"op": "tfa.image.rotate", "degrees": [10, 10], "interpolation": "bilinear"},
             {"op": "tfa.image.rotate", "degrees": [-10, -10], "interpolation": "bilinear"}]
    inside = (slice(None), slice(8, 40), slice(8, 40))
    fused_error = np.abs(run_chain(steps, SQUARE) - SQUARE.numpy())[inside]
    twice_error = np.abs(run_chain(steps, SQUARE, fuse=False) - SQUARE.numpy())[inside]
    assert fused_error.max() < 1e-4
    assert twice_error.mean() > 20 * fused_error.mean() + 1e-3


def test_fused_geometry_through_the_pipeline(small_folder, tmp_path):
    steps = [{"op": "idg", "rotation_range": 15, "width_shift_range": 0.1, "zoom_range": 0.1,
              "horizontal_flip": True, "brightness_range": [0.8, 1.2]},
             {"op": "tfa.image.rotate", "max_degrees": 5, "interpolation": "bilinear",
              "fill_mode": "nearest"},
             {"op": "tfa.image.gaussian_filter2d", "sigma": [0.5, 1.0]}]
    manifest = run_job(small_folder, tmp_path / "out", steps, copies=1, seed=3,
                       keep_original=False)
    assert_accounted(manifest)
    assert manifest["versions"]["tfa.image backend"] == tfa_image.BACKEND
    rows = read_outputs(str(tmp_path / "out"))
    assert len(rows) == manifest["counts"]["discovered"] == 9
    assert all(row["image"].ndim == 3 and row["image"].shape[-1] == 3 for row in rows)
