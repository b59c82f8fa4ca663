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
import dataclasses
from typing import Callable, Optional

import tensorflow as tf

from pipeline.ops import draw

INTERPOLATIONS = ("nearest", "bilinear")
FILL_MODES = ("constant", "reflect", "wrap", "nearest")
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


def transform(images, transforms, interpolation="nearest", fill_mode="constant", fill_value=0.0):
    """Resample images [B, H, W, C] with one flat transform per example ([B, 8]), in one call.

    The kernel tfa.image.transform calls, with the same arguments.
    """
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.cast(transforms, tf.float32),
        output_shape=tf.shape(images)[1:3], fill_value=tf.constant(fill_value, tf.float32),
        interpolation=interpolation.upper(), fill_mode=fill_mode.upper())


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
    previous op's output, and so on back to the input.
    """
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
    """
    matrices: Callable
    interpolation: str = "nearest"
    fill_mode: str = "constant"
    fill_value: float = 0.0
    finish: Optional[Callable] = None
    standalone: Optional[Callable] = None

    @property
    def sampling(self):
        return (self.interpolation, self.fill_mode, float(self.fill_value))

    def projective(self, seeds, height, width):
        return self.matrices(seeds, height, width)

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
                return tf.where(draw.expand(chosen(seeds)), self.finish(images, seeds), images)
        return dataclasses.replace(self, matrices=matrices, finish=finish, standalone=standalone)


def resample_run(members, images):
    """Apply [(Projective, its seeds), ...] in order with one resample.

    Every op draws from its own seeds, exactly as it would unfused.
    """
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    first, (last, last_seeds) = members[0][0], members[-1]
    transforms = compose([op.projective(seeds, height, width) for op, seeds in members])
    images = transform(images, transforms, first.interpolation, first.fill_mode, first.fill_value)
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
