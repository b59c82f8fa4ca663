"""The native ops (pipeline/ops/native.py), built on this machine: OpenCV's uint8 warp, whose
pixels are OpenCV's bit for bit; a byte lookup per image (and channel), whose pixels are the
uint8 op's and tf.image's brightness and contrast's, with tf.image's mean of a channel; the
conversions between uint8 and float32, whose values are TensorFlow's; stateless uniform draws
for a batch of seeds, TensorFlow's values bit for bit. A run writes the same
bytes with them or without them; they are built once per TensorFlow into augbatch's cache, and
without a compiler the ops they stand in for run and the log says so."""
import logging
import math
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from pipeline import augment, chain
from pipeline.ops import geometry, native, registry, uint8
from tests.conftest import ROOT, make_job, run_job, shard_bytes
from tests.test_opencv_kernel import parallel_and_batch_free
from tests.test_performance_paths import STANDARD, photos, seeds_for


def _matrices(height, width, rng):
    """Output -> input maps that reach every branch of the sampling: the identity, whole-pixel
    shifts (bilinear weights of 1 and 0), a flip, rotations and zooms about the centre reaching
    past the border, far outside the image, and projective ones."""
    cx, cy = (width - 1) / 2, (height - 1) / 2

    def about_centre(a, b, c, d, shift=(0.0, 0.0)):
        return [a, b, cx - a * cx - b * cy + shift[0], c, d, cy - c * cx - d * cy + shift[1]]

    out = [[1, 0, 0, 0, 1, 0, 0, 0], [1, 0, 3, 0, 1, -2, 0, 0], [-1, 0, width - 1, 0, 1, 0, 0, 0]]
    for _ in range(6):
        angle, scale = math.radians(rng.uniform(-40, 40)), rng.uniform(0.4, 2.5)
        cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
        shift = (rng.uniform(-0.4, 0.4) * width, rng.uniform(-0.4, 0.4) * height)
        out.append(about_centre(cos, -sin, sin, cos, shift) + [0, 0])
        out.append(about_centre(cos, -sin, sin, cos) + list(rng.uniform(-4e-3, 4e-3, 2)))
    out.append([1, 0, 5.0 * width, 0, 1, -7.0 * height, 0, 0])
    return np.array(out, np.float32).astype(np.float64)


def opencv(images, matrices, interpolation, fill_mode, fill_value):
    """The same warps by OpenCV itself, as the kernel calls it without the native warp."""
    options = geometry._warp_options(interpolation, fill_mode, float(fill_value))
    return geometry._warp(images, matrices, options)


@pytest.mark.parametrize("interpolation", geometry.INTERPOLATIONS)
@pytest.mark.parametrize("fill_mode", geometry.FILL_MODES)
def test_the_native_warp_writes_opencvs_pixels(interpolation, fill_mode):
    assert native.library() is not None, "this machine has g++: the warp must build"
    rng = np.random.default_rng(7)
    photo = np.concatenate([photos(1, 61, 83)[0]] * 2, axis=-1)  # real pixels, 6 channels
    for (height, width), channels in (((61, 83), 3), ((61, 83), 1), ((40, 33), 4),
                                      ((25, 30), 5), ((1, 9), 3), ((7, 1), 1), ((2, 2), 3)):
        images = np.ascontiguousarray(photo[None, :height, :width, :channels])
        matrices = _matrices(height, width, rng)
        images = np.repeat(images, len(matrices), axis=0)
        for fill_value in (0.0, 128.4, 300.0):
            ours = native.warp(images, matrices, interpolation, fill_mode, fill_value).numpy()
            ref = opencv(images, matrices, interpolation, fill_mode, fill_value)
            for index, (a, b) in enumerate(zip(ours, ref)):
                assert np.array_equal(a, b), (height, width, channels, fill_value, index,
                                              int((a != b).sum()))


def test_the_cpu_kernel_runs_it_without_python_and_writes_the_same_bytes(monkeypatch):
    """The default kernel's uint8 warp is the native op: the runner's graph calls no Python,
    and its copies are those of OpenCV called through Python. The conversions to and from
    float32 and the uint8 op's lookup are native too."""
    _, _, native_copies = parallel_and_batch_free(STANDARD)
    uint8_chain = [STANDARD[0], {"op": "uint8.random_brightness_contrast"}, STANDARD[3]]
    for steps, ops in ((STANDARD, ("AugbatchToFloat", "AugbatchToUint8", "AugbatchWarp")),
                       (uint8_chain, ("AugbatchLookup", "AugbatchWarp"))):
        graph = str(augment.ChainRunner(make_job("x", "y", steps))
                    ._augment_encode.graph.as_graph_def())
        assert all(op in graph for op in ops) and "PyFunc" not in graph
    monkeypatch.setenv("AUGBATCH_NATIVE_OPS", "0")
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert parallel_and_batch_free(STANDARD, "opencv_warp")[2] == native_copies
    finally:
        monkeypatch.delenv("AUGBATCH_NATIVE_OPS")
        native.library.cache_clear()


def test_the_lookup_writes_the_uint8_ops_pixels():
    """Each image's 256 values computed with the op's own arithmetic and looked up: the bytes
    of the arithmetic on every pixel, for gains and offsets that saturate, keep every level,
    darken to black and land on ties (x * 1 + 0.5 rounds half to even)."""
    images = np.concatenate([photos(4, 37, 53), photos(4, 37, 53, offset=4)])
    alpha = np.array([0.0, 1.0, 1.0, 0.7, 1.3, 2.5, 100.0, 0.5], np.float32)
    beta = np.array([0.0, 0.0, 0.5, -30.25, 40.7, -255.0, 0.0, 127.5], np.float32)
    by_pixel = uint8.multiply_add(images, alpha, beta).numpy()
    with native.for_cpu():
        assert native.usable()
        looked_up = tf.function(uint8.multiply_add)
        graph = str(looked_up.get_concrete_function(images, alpha, beta).graph.as_graph_def())
        assert "AugbatchLookup" in graph
        np.testing.assert_array_equal(looked_up(images, alpha, beta).numpy(), by_pixel)
        empty = native.lookup(images[:, :0], np.zeros((8, 256, 1), np.uint8))
        np.testing.assert_array_equal(empty, images[:, :0])  # empty images: nothing to look up
    assert not native.usable()  # only while tracing for the CPU


def _images(height, width, channels, count, rng):
    """Real photos' pixels (a channel repeated past three), or noise for a single channel."""
    if channels == 1:
        return rng.integers(0, 256, (count, height, width, 1), dtype=np.uint8)
    photo = photos(count, height, width)
    return np.ascontiguousarray(np.concatenate([photo, photo], axis=-1)[..., :channels])


SHAPES = [(1, 1, 3), (1, 2, 3), (3, 7, 3), (17, 33, 1), (31, 45, 4), (5, 1, 2), (64, 64, 3),
          (129, 67, 3)]


def _shifted_levels(shifts):
    """The levels tf.image's brightness gives right after the conversion to float32:
    convert_image_dtype's value of each level plus a shift per image [B] or image and channel
    [B, C] (the level mean computes those from the pixels, where the CPU has AVX-512)."""
    shifts = np.asarray(shifts, np.float32)
    channels = shifts.shape[1] if shifts.ndim == 2 else 1
    values = tf.image.convert_image_dtype(np.arange(256, dtype=np.uint8), tf.float32).numpy()
    return (values[None, :, None] + shifts.reshape(len(shifts), 1, channels)).astype(np.float32)


@pytest.mark.parametrize("vectors", [True, False], ids=["vectors", "scalar"])
def test_the_level_mean_is_adjust_contrasts_mean(vectors):
    """native.level_mean of the pixels that a table of values stands for is the mean
    tf.image.adjust_contrast takes of those pixels as float32 (its output at factor 0), bit
    for bit: its order of summation, values whose sums round; tables of any values and the
    shifted levels of a brightness (a shift per image, -0.0 and 0.0 among them, computed from
    the pixels; per channel: looked up), with AVX-512 (vectors, where this CPU has it) and
    without; sizes whose first folds halve exactly three times and others."""
    rng = np.random.default_rng(11)
    # (pixel counts that halve three times: the shifted levels' first three folds at once)
    for height, width, channels in SHAPES + [(1, 4097, 3), (250, 251, 3), (7, 9, 5),
                                             (256, 256, 3), (8, 10, 3), (4, 6, 1), (2, 4, 4),
                                             (7, 8, 5)]:
        images = _images(height, width, channels, 2, rng)
        tables = [(rng.uniform(-3, 3, (2, 256, channels)) * rng.uniform(0, 1e3, (2, 1, 1))
                   ).astype(np.float32),
                  np.repeat(_shifted_levels(rng.uniform(-0.5, 0.5, 2)), channels, axis=2),
                  np.repeat(_shifted_levels([-0.0, 0.0]), channels, axis=2),
                  _shifted_levels(rng.uniform(-0.5, 0.5, (2, channels)))]
        for levels in tables:
            pixels = np.stack([levels[b][images[b], np.arange(channels)] for b in range(2)])
            expected = tf.image.adjust_contrast(pixels, 0.0).numpy()[:, 0, 0, :]
            ours = native.level_mean(images, levels, vectors=vectors)
            np.testing.assert_array_equal(ours.numpy().view(np.int32),
                                          expected.view(np.int32),
                                          err_msg=(height, width, channels))


@pytest.mark.parametrize("vectors", [True, False], ids=["vectors", "scalar"])
def test_the_lookup_takes_a_table_per_channel_or_one_for_all(vectors):
    """Vectors (AVX-512's byte permutes, where this CPU has them: 64 bytes at a time, each
    channel's lanes by their phase) and the scalar loop write the same bytes: every level in
    every table's quarter, images whose bytes end inside a vector, 1 to 5 channels (past
    four: the scalar loop) and one table for every channel."""
    rng = np.random.default_rng(5)
    for height, width, channels in SHAPES + [(9, 13, 5), (3, 256, 3)]:
        images = _images(height, width, channels, 3, rng)
        if width == 256:  # a row of every level in every channel
            images[:, 0] = np.arange(256, dtype=np.uint8)[:, None]
        for table_channels in (channels, 1):
            tables = rng.integers(0, 256, (3, 256, table_channels), dtype=np.uint8)
            expected = np.stack([tables[b][images[b], np.arange(channels) % table_channels]
                                 for b in range(3)])
            np.testing.assert_array_equal(
                native.lookup(images, tables, vectors=vectors).numpy(), expected,
                err_msg=(height, width, channels, table_channels))


def test_the_mirror_flips_only_the_chosen_images():
    """native.mirror: the chosen images mirrored as tf.image's flips do, the others as they
    were, whether the op writes a new tensor (eager: the input is the caller's) or the input's
    own buffer (in a graph, on an intermediate tensor): odd and even sizes, 1 to 5 channels,
    a single row or column; none chosen (the input itself is the output) and one image alone;
    and a random flip of uint8 pixels, traced for the CPU, uses it."""
    rng = np.random.default_rng(3)
    mirrored = {1: tf.image.flip_up_down, 2: tf.image.flip_left_right}
    in_graph = tf.function(lambda images, flip, axis: native.mirror(images ^ 0, flip, axis))
    flips = [[True, False, True, False], [False] * 4, [True], [False]]
    for height, width, channels in SHAPES + [(1, 9, 3), (9, 1, 3), (6, 10, 5), (8, 8, 2)]:
        for flip in map(np.array, flips):
            images = rng.integers(0, 256, (len(flip), height, width, channels), dtype=np.uint8)
            kept = images.copy()
            for axis, reference in mirrored.items():
                expected = np.where(flip[:, None, None, None], reference(images).numpy(), images)
                for ours in (native.mirror(images, flip, axis), in_graph(images, flip, axis)):
                    np.testing.assert_array_equal(ours.numpy(), expected,
                                                  err_msg=(height, width, channels, axis, flip))
                np.testing.assert_array_equal(images, kept)  # (the caller's input untouched)
    images, seeds = rng.integers(0, 256, (4, 7, 6, 3), dtype=np.uint8), seeds_for(4)
    for name in ("tf.image.random_flip_left_right", "tf.image.random_flip_up_down"):
        flip = chain.build(chain.normalize([{"op": name}]))
        with native.for_cpu():
            fn = tf.function(flip)
            graph = fn.get_concrete_function(images, seeds).graph.as_graph_def()
        assert "AugbatchMirror" in str(graph)
        np.testing.assert_array_equal(fn(images, seeds).numpy(), flip(images, seeds).numpy())


COLOUR_CHAINS = {
    "brightness, contrast": [
        {"op": "tf.image.random_brightness", "max_delta": 0.3},
        {"op": "tf.image.random_contrast", "lower": 0.5, "upper": 1.8}],
    "contrast, brightness, contrast": [
        {"op": "tf.image.random_contrast", "lower": 0.2, "upper": 3.0},
        {"op": "tf.image.random_brightness", "max_delta": 0.5},
        {"op": "tf.image.adjust_contrast", "contrast_factor": 1.7}],
    "fixed brightness, saturating contrast": [
        {"op": "tf.image.adjust_brightness", "delta": -0.2},
        {"op": "tf.image.random_contrast", "lower": 2.5, "upper": 6.0}],
    "each sometimes": [
        {"op": "tf.image.random_brightness", "max_delta": 0.3, "probability": 0.5},
        {"op": "tf.image.random_contrast", "lower": 0.5, "upper": 1.8, "probability": 0.3}],
}


@pytest.mark.parametrize("name", COLOUR_CHAINS)
def test_tf_images_colour_ops_on_levels_write_their_pixels(name):
    """tf.image's brightness and contrast between the float32 conversions, computed on each
    image's 256 levels per channel and looked up (augment.through_levels): the bytes of the
    float32 passes over every pixel, for real photos and noise, odd sizes, 1 to 4 channels,
    one image and several, contrasts that clip."""
    steps = chain.normalize(COLOUR_CHAINS[name])
    fast = augment.through_levels(chain.build(steps), chain.build_levels(steps))

    @tf.function
    def both(images, seeds):
        with native.for_cpu():
            on_levels = fast(images, seeds)
        return on_levels, fast(images, seeds)  # (outside for_cpu: the float32 passes)
    rng = np.random.default_rng(2)
    for height, width, channels in SHAPES:
        for count in (1, 3):
            images = _images(height, width, channels, count, rng)
            seeds = seeds_for(count, salt=height)
            on_levels, on_pixels = both(images, seeds)
            np.testing.assert_array_equal(on_levels.numpy(), on_pixels.numpy(),
                                          err_msg=(height, width, channels, count))
    graph = str(both.get_concrete_function(images, seeds).graph.as_graph_def())
    assert "AugbatchLevelMean" in graph and "AdjustContrastv2" in graph


UINT8_OP = {"op": "uint8.random_brightness_contrast", "contrast": [0.6, 1.4],
            "brightness": [-0.3, 0.3]}
# Chains whose pixels do not depend on their batch (build_chain's exact_in_batches, with the
# default kernel, opencv-uint8): flips, the uint8 op and resamples on uint8 pixels,
# brightness and contrast on levels.
IN_CHUNKS = {
    "flip, colour on levels": [{"op": "tf.image.random_flip_left_right"},
                               *COLOUR_CHAINS["brightness, contrast"]],
    "colour, each sometimes": COLOUR_CHAINS["each sometimes"],
    "flips, uint8 op": [{"op": "tf.image.random_flip_up_down"},
                        {"op": "tf.image.flip_left_right"}, UINT8_OP],
    "flip, colour on levels, rotation": STANDARD,
    "shift, uint8 op, shear": [
        {"op": "tfa.image.translate", "dx": [-6, 6], "dy": [-4, 4], "interpolation": "bilinear"},
        UINT8_OP, {"op": "tfa.image.shear_x", "level": [-0.3, 0.3]}],
}


@pytest.mark.parametrize("name", IN_CHUNKS)
def test_chains_exact_in_batches_take_copies_in_chunks_with_the_same_bytes(name, monkeypatch):
    """Such a chain's loop takes augment.CHUNK_COPIES copies at a time, and its notes are
    drawn for the whole batch: the same encoded bytes and the same notes as one copy at a
    time, for a batch of 5 inputs of 3 copies (chunks across inputs, the last one filled) and
    for each input alone; inputs too large for a chunk (augment.CHUNK_PIXELS) go one at a
    time with the batch's notes."""
    steps = IN_CHUNKS[name]
    chunked = augment.ChainRunner(make_job("x", "y", steps, copies=3))
    assert chunked.chain.exact_in_batches
    build_chain = augment.build_chain

    def one_at_a_time(*args, **kwargs):
        run = build_chain(*args, **kwargs)
        run.exact_in_batches = False
        return run
    monkeypatch.setattr(augment, "build_chain", one_at_a_time)
    alone = augment.ChainRunner(make_job("x", "y", steps, copies=3))
    assert not alone.chain.exact_in_batches
    images, seeds = photos(5, 37, 50), seeds_for(15)
    formats = ["png", "jpeg", "png"] * 5
    expected = alone.augment_encode(images, seeds, formats)
    assert expected[2] and all(expected[2])  # (the notes of each copy)
    assert chunked.augment_encode(images, seeds, formats) == expected
    for i in range(5):
        encoded, _, notes = chunked.augment_encode(images[i:i + 1], seeds[3 * i:3 * i + 3],
                                                   formats[3 * i:3 * i + 3])
        assert encoded == expected[0][3 * i:3 * i + 3] and notes == expected[2][3 * i:3 * i + 3]
    large, seeds = photos(2, 190, 350), seeds_for(6)
    assert 190 * 350 * augment.CHUNK_COPIES > augment.CHUNK_PIXELS
    assert chunked.augment_encode(large, seeds, formats[:6]) == alone.augment_encode(
        large, seeds, formats[:6])


def test_only_chains_exact_in_batches_take_copies_in_chunks(monkeypatch):
    """A rotation of float32 pixels (another kernel: it then sits between the float32
    conversions with colour ops off their levels), two resamples in a row (fused by a matrix
    product), ImageDataGenerator's transform (its matrix products), a resample of some copies
    only, colour outside levels, a group, XLA or no native ops: one copy at a time."""
    def exact(steps, kernel="opencv-uint8", **options):
        return augment.build_chain(chain.normalize(steps), kernel=kernel,
                                   **options).exact_in_batches
    assert all(exact(steps) for steps in IN_CHUNKS.values())
    assert not exact(STANDARD, kernel="opencv") and not exact(STANDARD, kernel="tensorflow")
    rotation, shift = STANDARD[3], IN_CHUNKS["shift, uint8 op, shear"][0]
    assert exact([rotation, UINT8_OP, shift]) and not exact([rotation, shift, UINT8_OP])
    assert not exact([dict(rotation, probability=0.5)])
    assert not exact([{"op": "idg", "rotation_range": 20, "width_shift_range": 0.1}])
    assert not exact([{"op": "tf.image.random_saturation", "lower": 0.5, "upper": 1.5}])
    assert not exact([{"one_of": [{"op": "tf.image.flip_left_right"},
                                  {"op": "tf.image.flip_up_down"}]}])
    assert not exact(IN_CHUNKS["flip, colour on levels"], xla=True)
    monkeypatch.setenv("AUGBATCH_NATIVE_OPS", "0")
    native.library.cache_clear()
    try:
        assert not exact(IN_CHUNKS["flip, colour on levels"])
    finally:
        monkeypatch.undo()
        native.library.cache_clear()


def test_the_chain_computes_colour_on_levels_only_where_it_can():
    """The float32 stage of brightness and contrast runs on levels (their probabilities
    too); a group, or an op without a form on levels, keeps the float32 passes."""
    def graph(steps):
        run = augment.build_chain(chain.normalize(steps), kernel="opencv-uint8")
        images, seeds = photos(2, 20, 30), seeds_for(2)
        return str(tf.function(run).get_concrete_function(images, seeds).graph.as_graph_def())
    assert "AugbatchLevelMean" in graph(STANDARD) and "AdjustContrastv2" not in graph(STANDARD)
    sometimes = [STANDARD[0], STANDARD[1], dict(STANDARD[2], probability=0.5), STANDARD[3]]
    assert "AugbatchLevelMean" in graph(sometimes)
    saturation = [STANDARD[1], {"op": "tf.image.random_saturation", "lower": 0.5, "upper": 1.5}]
    group = [{"one_of": STANDARD[1:3]}]
    for steps in (saturation, group):
        assert "AugbatchLevelMean" not in graph(steps) and "AugbatchLookup" not in graph(steps)


def test_the_conversions_are_tensorflows():
    """uint8 -> float32 for every level, and float32 -> uint8 at and around every level's
    edge, outside [0, 1], at the infinities and NaN: TensorFlow's values, bit for bit."""
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    edges = np.arange(257, dtype=np.float32) / np.float32(255.5)
    values = np.concatenate([
        edges, np.nextafter(edges, np.float32(2)), np.nextafter(edges, np.float32(-2)),
        np.arange(256, dtype=np.float32) / np.float32(255),
        np.random.default_rng(3).uniform(-0.5, 1.5, 4000).astype(np.float32),
        np.array([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, 3.4e38, -3.4e38],
                 np.float32)])
    values = values[:len(values) // 3 * 3].reshape(1, -1, 1, 3)  # (an odd count: a tail too)
    expected = augment.to_float(levels).numpy(), augment.to_uint8(values).numpy()
    with native.for_cpu():
        assert native.usable()
        ours = (tf.function(augment.to_float)(levels).numpy(),
                tf.function(augment.to_uint8)(values).numpy())
        graph = str(tf.function(augment.to_uint8).get_concrete_function(values).graph
                    .as_graph_def())
        assert "AugbatchToUint8" in graph
    np.testing.assert_array_equal(ours[0].view(np.int32), expected[0].view(np.int32))
    np.testing.assert_array_equal(ours[1], expected[1])


def test_the_draws_are_tensorflows_stateless_draws():
    """native.draw and native.fold_in give each row of a batch of seeds what
    tf.random.stateless_uniform and stateless_fold_in give that seed alone, bit for bit: random
    and edge seeds (negative, the int32 limits), one value to a few groups of Philox's four,
    float and int ranges (one crossing zero, the whole int32 range); an empty batch; a range
    that is empty is refused as TensorFlow refuses it. Traced for the CPU, the chain's draws
    are the native ops."""
    rng = np.random.default_rng(5)
    seeds = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, (40, 2)),
                            [[0, 0], [-1, -1], [2 ** 31 - 1, -2 ** 31], [1, 0]]]).astype(np.int32)
    ranges = [(0.0, 1.0, tf.float32), (-0.2, 0.2, tf.float32), (0.7, 1.3, tf.float32),
              (-20.0, 20.0, tf.float32), (0, 4, tf.int32), (-5, 7, tf.int32),
              (-2 ** 31, 2 ** 31 - 1, tf.int32)]
    for shape in [(), (1,), (3,), (4,), (5,), (9,), (2, 3)]:
        for low, high, dtype in ranges:
            ours = native.draw(seeds, low, high, shape, dtype).numpy()
            assert ours.shape == (len(seeds), *shape)
            for row, seed in zip(ours, seeds):
                theirs = tf.random.stateless_uniform(shape, seed, low, high, dtype).numpy()
                np.testing.assert_array_equal(row.view(np.int32), theirs.view(np.int32),
                                              err_msg=(shape, low, high, seed))
    for data in (0, 7, -3, 2 ** 31 - 1):
        ours = native.fold_in(seeds, data).numpy()
        theirs = [tf.random.experimental.stateless_fold_in(seed, data).numpy() for seed in seeds]
        np.testing.assert_array_equal(ours, theirs)
    assert native.draw(np.zeros((0, 2), np.int32), 0.0, 1.0, (3,), tf.float32).shape == (0, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="minval < maxval"):
        native.draw(seeds, 3, 3, (), tf.int32)
    steps = chain.normalize(GROUPS)
    images = tf.image.convert_image_dtype(photos(6, 24, 32), tf.float32)
    with native.for_cpu():
        fn = tf.function(chain.build(steps))
        graph = str(fn.get_concrete_function(images, seeds_for(6)).graph.as_graph_def())
    assert "AugbatchDraw" in graph and "AugbatchFoldIn" in graph
    assert "StatelessRandomUniformV2" not in graph


def test_a_rotations_matrices_in_a_batch_are_each_copys_alone():
    """Traced for the CPU, a rotation's sine and cosine are the native op's: each value what
    TensorFlow's Sin and Cos give a tensor of one, bit for bit (64 values and more go through
    Eigen's vectorised polynomials in TensorFlow's own), so each copy's matrix is the one it
    gets alone, whatever its batch: random angles, the edges of float32 (zero and its sign,
    the smallest values, a large one, infinities, NaN)."""
    angles = np.concatenate([
        np.random.default_rng(6).uniform(-4, 4, 300),
        [0.0, -0.0, 1e-45, -1e-45, 1.2e-38, np.pi, -np.pi / 2, 1e5, 3.4e38, np.inf, -np.inf,
         np.nan]]).astype(np.float32)
    sines, cosines = native.sin_cos(angles)
    for angle, sine, cosine in zip(angles, sines.numpy(), cosines.numpy()):
        alone = angle[None]
        np.testing.assert_array_equal(
            np.array([sine, cosine]).view(np.int32),
            np.array([tf.math.sin(alone)[0], tf.math.cos(alone)[0]]).view(np.int32),
            err_msg=angle)
    step = chain.normalize([STANDARD[3]])[0]
    rotation = registry.get(step["op"]).build(step["params"])
    seeds = seeds_for(64)
    with native.for_cpu():
        matrices = tf.function(lambda seeds: rotation.projective(seeds, 37.0, 50.0))
        graph = str(matrices.get_concrete_function(seeds).graph.as_graph_def())
        together = matrices(seeds).numpy()
        alone = np.concatenate([matrices(seeds[i:i + 1]).numpy() for i in range(64)])
    assert "AugbatchSinCos" in graph and '"Cos"' not in graph
    np.testing.assert_array_equal(together.view(np.int32), alone.view(np.int32))


# Every kind of draw a chain makes: a probability's coin, one_of's pick, some_of's count and
# order (int and shaped draws), an op's own draws.
GROUPS = [
    {"op": "tf.image.random_flip_left_right", "probability": 0.6},
    {"one_of": [{"op": "tf.image.random_brightness", "max_delta": 0.3},
                {"op": "tf.image.random_contrast", "lower": 0.6, "upper": 1.5}]},
    {"some_of": [{"op": "tf.image.random_saturation", "lower": 0.5, "upper": 1.5},
                 {"op": "tfa.image.rotate", "max_degrees": 15, "interpolation": "bilinear"},
                 {"op": "tf.image.random_hue", "max_delta": 0.1}], "n": [0, 2]},
]


@pytest.mark.parametrize("chain", [
    # The uint8 op between a flip and a rotation, and a projective warp after them: every
    # step on uint8 pixels (the native warp and lookup).
    [{"op": "tf.image.random_flip_left_right"},
     {"op": "uint8.random_brightness_contrast", "contrast": [0.6, 1.4],
      "brightness": [-0.3, 0.3]},
     {"op": "tfa.image.rotate", "max_degrees": 20, "interpolation": "bilinear"},
     {"op": "tfa.image.transform", "interpolation": "bilinear",
      "transforms": [0.9, -0.1, 3.5, 0.1, 1.1, -2.5, 0.002, -0.001]}],
    # tf.image's colour ops in float32 between them (the native conversions).
    STANDARD,
    # Coins, picks and counts: the native draws (the records note every draw, too).
    GROUPS], ids=["uint8", "float", "groups"])
def test_a_run_writes_the_same_shards_with_or_without_them(small_folder, tmp_path, monkeypatch,
                                                           chain):
    runs = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("AUGBATCH_NATIVE_OPS", setting)
        native.library.cache_clear()
        run_job(small_folder, tmp_path / setting, chain, copies=3)
        runs[setting] = shard_bytes(tmp_path / setting)
    native.library.cache_clear()
    assert runs["1"] and runs["1"] == runs["0"]


BUILD = """
import sys
from pipeline.ops import native
library = native.library()
print("built" if library is not None else "none", native._library_path())
"""


def test_it_is_built_once_into_the_cache_even_by_processes_at_once(tmp_path):
    env = {**os.environ, "AUGBATCH_CACHE_DIR": str(tmp_path / "cache")}
    builders = [subprocess.Popen([sys.executable, "-c", BUILD], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(2)]
    outputs = [builder.communicate(timeout=600) for builder in builders]
    paths = set()
    for (out, err), builder in zip(outputs, builders):
        assert builder.returncode == 0, err
        state, path = out.split()
        assert state == "built", err
        paths.add(path)
    (path,) = paths
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no leftovers
    built_at = os.stat(path).st_mtime_ns
    again = subprocess.run([sys.executable, "-c", BUILD], env=env, text=True,
                           capture_output=True, timeout=600)
    assert again.stdout.split() == ["built", path]
    assert os.stat(path).st_mtime_ns == built_at
    assert "building" not in again.stderr


def test_an_installed_augbatch_carries_every_source_the_native_ops_build_from(tmp_path):
    """The wheel `pip install .` makes (what a cluster's workers install) holds each native
    source and the header they include: a worker builds the library from them."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("setup.py", "README.md", "cli.py"):
        shutil.copy(os.path.join(ROOT, name), project / name)
    shutil.copytree(os.path.join(ROOT, "pipeline"), project / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(tmp_path / "wheel"), str(project)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("augbatch-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    needed = {f"pipeline/ops/{path.name}" for path in native.SOURCES + native.HEADERS}
    assert needed <= packaged, sorted(needed - packaged)


def test_without_a_compiler_warps_call_opencv_and_say_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AUGBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="augbatch"):
            assert native.library() is None
        assert "no C++ compiler" in caplog.text and "same pixels" in caplog.text
        images = photos(2, 30, 40)
        matrices = np.array([[0.9, -0.3, 8.5, 0.25, 1.1, -4.5, 0, 0]] * 2, np.float32)
        with geometry.kernel("opencv"):
            warped = tf.function(lambda x: geometry.transform(x, matrices, "bilinear",
                                                              "reflect"))
            graph = str(warped.get_concrete_function(images).graph.as_graph_def())
            assert "opencv_warp" in graph and "AugbatchWarp" not in graph
            out = warped(images).numpy()
        np.testing.assert_array_equal(out, opencv(images, matrices.astype(np.float64),
                                                  "bilinear", "reflect", 0.0))
    finally:
        native.library.cache_clear()


def test_a_compiler_that_fails_is_named_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    compiler = tmp_path / "broken-g++"
    compiler.write_text("#!/bin/sh\necho 'fatal error: this compiler is broken' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("AUGBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(compiler))
    native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="augbatch"):
            assert native.library() is None
        assert "this compiler is broken" in caplog.text
        assert not list((tmp_path / "cache" / "ops").iterdir())  # nothing half-built kept
    finally:
        native.library.cache_clear()
