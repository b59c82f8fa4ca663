"""Geometric ops as projective transforms, and the fusion of consecutive ones into one resample.

A geometric op's builder returns a `Projective`: besides being an ordinary op
(``fn(images, seeds) -> images``) it exposes its per-example transform,
``projective(seeds, height, width) -> [B, 8]``, and the sampling it resamples with
(interpolation, fill mode, fill value). The chain (chain.build) composes the matrices of a run
of consecutive Projectives with the same sampling and resamples once: faster (one
ImageProjectiveTransformV3 call instead of several, the cost centre of a typical chain) and
sharper (bilinear blurs once, not once per op).

Transforms use tfa.image.transform's convention: [a0, a1, a2, b0, b1, b2, c0, c1] maps an
output pixel (x, y) to the input point ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k) with
k = c0 x + c1 y + 1; x is the column, y the row.
"""
import contextlib
import dataclasses
import functools
import threading
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from pipeline.ops import draw, native

INTERPOLATIONS = ("nearest", "bilinear")
FILL_MODES = ("constant", "reflect", "wrap", "nearest")
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
# The resample kernels a run can choose (runtime.kernel): OpenCV's on the CPU, or TensorFlow's.
# "opencv-uint8" resamples the stored uint8 pixels where geometric ops start or end the chain
# (augment.plan), not float32 ones: what a uint8 pipeline does; OpenCV's uint8 warp is faster.
KERNELS = ("opencv-uint8", "opencv", "tensorflow")


def transform(images, transforms, interpolation="nearest", fill_mode="constant", fill_value=0.0):
    """Resample images [B, H, W, C] with one flat transform per example ([B, 8]), in one call.

    The kernel tfa.image.transform calls, with the same arguments (inside `for_xla()`: the
    same sampling written with gathers, which XLA compiles; inside `kernel("opencv")`:
    OpenCV's warp).
    """
    if getattr(_tracing, "for_xla", False):
        return transform_with_gathers(images, transforms, interpolation, fill_mode, fill_value)
    if kernel_in_use() == "opencv":
        return transform_with_opencv(images, transforms, interpolation, fill_mode, fill_value)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.shape(images)[1:3], fill_value=tf.constant(fill_value, tf.float32),
        interpolation=interpolation.upper(), fill_mode=fill_mode.upper())


# --- the same sampling with OpenCV, on the CPU ------------------------------------------------
# TensorFlow's kernel takes ~2.8 ms for a 256 x 256 RGB image on one thread; OpenCV's warp
# ~0.5 ms. Same conventions (output -> input matrix, pixel centres at integer coordinates, the
# same fill modes), but OpenCV rounds sample points to 1/32 pixel and TensorFlow's 'wrap' has
# its own border: a pixel can differ by a level or two (a few at a 'constant' edge, more along
# a 'wrap' seam); tests/test_opencv_kernel.py bounds it per op on real photos. The kernel is
# chosen at tracing time (`kernel(...)`, as for_xla) and is part of the config hash.

# TensorFlow's fill modes as OpenCV borders: reflect is [dcba|abcd|dcba], nearest repeats the edge.
_BORDERS = {"constant": "BORDER_CONSTANT", "reflect": "BORDER_REFLECT", "wrap": "BORDER_WRAP",
            "nearest": "BORDER_REPLICATE"}
# The numpy_function ops of this kernel (their registry tokens): Python in the graph that never
# calls TensorFlow back, so augment.ChainRunner need not run such a chain one call at a time.
OPENCV_TOKENS = set()


@contextlib.contextmanager
def kernel(name):
    """While tracing in here, transform() resamples with kernel `name` (one of KERNELS)."""
    before = getattr(_tracing, "kernel", "tensorflow")
    _tracing.kernel = name
    try:
        yield
    finally:
        _tracing.kernel = before


def kernel_in_use():
    """The kernel being traced for: "opencv" or "tensorflow" (compiled by XLA: tensorflow)."""
    if getattr(_tracing, "for_xla", False):
        return "tensorflow"
    return getattr(_tracing, "kernel", "tensorflow")


def call_opencv(fn, inputs, dtype, name):
    """tf.numpy_function(fn, inputs, dtype) for a function that only calls OpenCV and numpy
    (never TensorFlow): noted in OPENCV_TOKENS."""
    out = tf.numpy_function(fn, inputs, dtype, stateful=False, name=name)
    OPENCV_TOKENS.add(out.op.get_attr("token").decode())
    return out


def transform_with_opencv(images, transforms, interpolation="nearest", fill_mode="constant",
                          fill_value=0.0):
    """transform() with OpenCV's warpAffine / warpPerspective: for uint8 images, OpenCV's
    arithmetic as a native TensorFlow op where it could be built (native.py); otherwise
    OpenCV itself, called from the graph."""
    # (float64 here, as OpenCV takes its matrices: less Python per image in the call; from
    # float32, as the sampling points have always been computed)
    matrices = tf.cast(tf.cast(transforms, tf.float32), tf.float64)
    if images.dtype == tf.uint8 and native.library() is not None:  # (this kernel: the CPU's)
        return native.warp(images, matrices, interpolation, fill_mode, float(fill_value))
    warp = functools.partial(_warp, options=_warp_options(interpolation, fill_mode,
                                                          float(fill_value)))
    out = call_opencv(warp, [images, matrices], images.dtype, name="opencv_warp")
    return tf.ensure_shape(out, images.shape)


@functools.lru_cache(maxsize=None)
def cv2_module():
    """OpenCV, each call on the calling thread: the runner already fills the cores with several
    images at once, as it does TensorFlow's ops (augment.configure_threads)."""
    import cv2
    cv2.setNumThreads(1)
    return cv2


@functools.lru_cache(maxsize=None)
def _warp_options(interpolation, fill_mode, fill_value):
    cv2 = cv2_module()
    return dict(flags=cv2.WARP_INVERSE_MAP | (cv2.INTER_LINEAR if interpolation == "bilinear"
                                              else cv2.INTER_NEAREST),
                borderMode=getattr(cv2, _BORDERS[fill_mode]), borderValue=(fill_value,) * 4)


def _warp(images, transforms, options):
    """Each image of `images` [B, H, W, C] warped by its row of `transforms` [B, 8] (float64).
    Runs in TensorFlow's threads, which take turns at Python's lock for it, and Python's work
    per call costs more there than alone (~80 us around each warp, measured): kept little."""
    cv2 = cv2_module()
    height, width, channels = images.shape[1:]
    out = np.empty_like(images)
    for index, flat in enumerate(transforms):
        affine = flat[6] == 0.0 and flat[7] == 0.0
        matrix = flat[:6].reshape(2, 3) if affine else np.append(flat, 1.0).reshape(3, 3)
        warp = cv2.warpAffine if affine else cv2.warpPerspective
        for start in range(0, channels, 4):  # OpenCV warps at most 4 channels at once
            part = images[index, :, :, start:start + 4]
            if channels > 4:
                part = np.ascontiguousarray(part)
            # OpenCV writes straight into the output where that is one contiguous block.
            target = out[index] if channels <= 4 else None
            warped = warp(part, matrix, (width, height), dst=target, **options)
            if warped is not target:
                out[index, :, :, start:start + 4] = warped.reshape(part.shape)
    return out


# --- the same sampling, for XLA ----------------------------------------------------------------
# ImageProjectiveTransformV3 has no XLA kernel. augment.py compiles chain segments with XLA
# (runtime.xla) and traces them inside for_xla(), where transform() samples with gathers:
# XLA fuses the coordinate maths, the four reads and the blend into one loop, about twice as
# fast as the kernel, which redoes the maths for every channel. Equal to the kernel up to
# float rounding (~1e-5).

_tracing = threading.local()


@contextlib.contextmanager
def for_xla():
    """While tracing in here, transform() uses transform_with_gathers."""
    before = getattr(_tracing, "for_xla", False)
    _tracing.for_xla = True
    try:
        yield
    finally:
        _tracing.for_xla = before


def _map_coordinates(coords, size, fill_mode):
    """Sample coordinates outside [0, size - 1] mapped inside, as the kernel's fill modes do
    ('constant' keeps them: reads there give the fill value)."""
    if fill_mode == "constant":
        return coords
    length = tf.cast(size, tf.float32)
    last = length - 1.0
    if fill_mode == "nearest":
        return tf.clip_by_value(coords, 0.0, last)
    if fill_mode == "reflect":  # [abcd] -> [dcba|abcd|dcba]
        twice = 2.0 * length
        low = tf.where(coords < twice, twice * tf.floor(-coords / twice) + coords, coords)
        low = tf.where(low < -length, low + twice, -low - 1.0)
        high = coords - twice * tf.floor(coords / twice)
        high = tf.where(high >= length, twice - high - 1.0, high)
    else:  # wrap: [abcd] -> [abcd|abcd|abcd]
        low = coords + length * (tf.floor(-coords / last) + 1.0)
        high = coords - length * tf.floor(coords / last)
    mapped = tf.where(coords < 0.0, low, tf.where(coords > last, high, coords))
    mapped = tf.where(size <= 1, tf.zeros_like(mapped), mapped)
    return tf.clip_by_value(mapped, 0.0, tf.maximum(last, 0.0))


def transform_with_gathers(images, transforms, interpolation="nearest", fill_mode="constant",
                           fill_value=0.0):
    """transform() written with gathers (the kernel's sampling, step by step)."""
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    t = tf.cast(transforms, tf.float32)
    ys = tf.cast(tf.range(height), tf.float32)[None, :, None]
    xs = tf.cast(tf.range(width), tf.float32)[None, None, :]
    a0, a1, a2, b0, b1, b2, c0, c1 = [t[:, i, None, None] for i in range(8)]
    projection = c0 * xs + c1 * ys + 1.0
    in_x = _map_coordinates((a0 * xs + a1 * ys + a2) / projection, width, fill_mode)
    in_y = _map_coordinates((b0 * xs + b1 * ys + b2) / projection, height, fill_mode)
    flat = tf.reshape(images, [batch, height * width, channels])
    fill = tf.cast(fill_value, images.dtype)

    def read(y, x):
        """The pixels at integer coordinates y, x [B, H, W] -> [B, H, W, C]; fill outside."""
        y, x = tf.cast(y, tf.int32), tf.cast(x, tf.int32)
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        index = tf.clip_by_value(y, 0, height - 1) * width + tf.clip_by_value(x, 0, width - 1)
        values = tf.gather(flat, tf.reshape(index, [batch, -1]), batch_dims=1)
        return tf.where(inside[..., None], tf.reshape(values, shape), fill)

    if interpolation == "nearest":
        def round_half_away(v):  # std::round, as the kernel
            return tf.sign(v) * tf.floor(tf.abs(v) + 0.5)
        out = read(round_half_away(in_y), round_half_away(in_x))
    else:
        y_floor, x_floor = tf.floor(in_y), tf.floor(in_x)
        y_ceil, x_ceil = y_floor + 1.0, x_floor + 1.0
        left, right = (x_ceil - in_x)[..., None], (in_x - x_floor)[..., None]
        up, down = (y_ceil - in_y)[..., None], (in_y - y_floor)[..., None]

        def value(y, x):
            return tf.cast(read(y, x), tf.float32)
        top = left * value(y_floor, x_floor) + right * value(y_floor, x_ceil)
        bottom = left * value(y_ceil, x_floor) + right * value(y_ceil, x_ceil)
        out = tf.cast(up * top + down * bottom, images.dtype)
    return tf.where((projection == 0.0)[..., None], fill, out)  # a point at infinity


def to_matrices(transforms):
    """[B, 8] flat transforms -> [B, 3, 3]."""
    ones = tf.ones_like(transforms[:, :1])
    return tf.reshape(tf.concat([transforms, ones], axis=1), [-1, 3, 3])


def to_flat(matrices):
    """[B, 3, 3] -> [B, 8] flat transforms (normalised so the last entry is 1)."""
    flat = tf.reshape(matrices, [-1, 9])
    return flat[:, :8] / flat[:, 8:]


def compose(transforms):
    """One transform per example doing the list's transforms in order (first op first).

    Output -> input maps compose left to right: the last op maps an output pixel into the
    previous op's output, and so on back to the input. One transform is itself (its flat
    form has the last entry 1 already: to_flat would divide by 1), without six ops per copy.
    """
    if len(transforms) == 1:
        return transforms[0]
    matrix = to_matrices(transforms[0])
    for flat in transforms[1:]:
        matrix = tf.matmul(matrix, to_matrices(flat))
    return to_flat(matrix)


def identity(batch_size):
    return tf.tile(tf.constant([IDENTITY], tf.float32), [batch_size, 1])


@dataclasses.dataclass(frozen=True)
class Projective:
    """A geometric op: one projective transform per example, then optional per-pixel work.

    matrices(seeds [B, 2], height, width) -> [B, 8]: the example's transform, drawn from its seed.
    finish(images, seeds) -> images: per-pixel work after the resample (e.g. idg's channel
    shift and brightness); None for a pure geometric op. Only the last op of a fused run may
    have one, since per-pixel work cannot be moved past a later resample.
    standalone: how to run the op when it is not fused (e.g. only on the examples a
    probability picked); None resamples every example.
    exact_in_batches: whether each example's matrix is the same in a batch of any size when
    traced with the native ops (draws and elementwise arithmetic: augment.build_chain's
    chunks); TensorFlow's transcendental functions and matrix products vectorise by place.
    """
    matrices: Callable
    interpolation: str = "nearest"
    fill_mode: str = "constant"
    fill_value: float = 0.0
    finish: Optional[Callable] = None
    standalone: Optional[Callable] = None
    exact_in_batches: bool = False

    @property
    def sampling(self):
        return (self.interpolation, self.fill_mode, float(self.fill_value))

    def projective(self, seeds, height, width):
        return self.matrices(seeds, height, width)

    @tf.autograph.experimental.do_not_convert  # plain graph code: nothing for AutoGraph to do
    def __call__(self, images, seeds):
        if self.standalone is not None:
            return self.standalone(images, seeds)
        return resample_run([(self, seeds)], images)

    def sometimes(self, chosen, standalone):
        """This op on the examples where chosen(seeds) [B] holds, identity elsewhere.

        Resampling with the identity matrix returns the pixels exactly (nearest and bilinear
        sample at integer points), so the op stays fusable with the same draws.
        """
        def matrices(seeds, height, width):
            return tf.where(chosen(seeds)[:, None], self.matrices(seeds, height, width),
                            identity(tf.shape(seeds)[0]))

        finish = None
        if self.finish is not None:
            def finish(images, seeds):
                return draw.apply_where(chosen(seeds), lambda x: self.finish(x, seeds), images)
        return dataclasses.replace(self, matrices=matrices, finish=finish, standalone=standalone)


@tf.autograph.experimental.do_not_convert
def resample_run(members, images):
    """Apply [(Projective, its seeds), ...] in order with one resample.

    Every op draws from its own seeds, exactly as it would unfused.
    """
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    first, (last, last_seeds) = members[0][0], members[-1]
    transforms = compose([op.projective(seeds, height, width) for op, seeds in members])
    fill = first.fill_value  # in [0, 1]; on stored pixels (augment.plan) as to_uint8 stores it
    if images.dtype == tf.uint8:
        fill = float(np.floor(np.clip(fill, 0.0, 1.0) * 255.5))
    images = transform(images, transforms, first.interpolation, first.fill_mode, fill)
    return last.finish(images, last_seeds) if last.finish is not None else images


def fuse_runs(fns):
    """Group a chain's step functions: [[(step index, fn), ...], ...], in order.

    Consecutive Projectives join one run when they resample the same way (same interpolation,
    fill mode and fill value) and the earlier one has no per-pixel finish, so the fused op
    draws the same numbers and applies the same geometry. The output equals applying them one
    by one wherever the intermediate sample points stay inside the image (exactly with nearest
    and integer-valued transforms; bilinear blurs once instead of once per op). Near the border
    the fused op can show real pixels where one-by-one would show an earlier op's fill.
    """
    runs = []
    for index, fn in enumerate(fns):
        previous = runs[-1][-1][1] if runs else None
        if (isinstance(fn, Projective) and isinstance(previous, Projective)
                and previous.finish is None and fn.sampling == previous.sampling):
            runs[-1].append((index, fn))
        else:
            runs.append([(index, fn)])
    return runs
