"""Per-example randomness for batched ops.

Every draw takes ``seeds`` int32 [B, 2] (one stateless seed per example) and returns one value
per example, so a batch of 1 and a batch of 64 give each image the same numbers.
"""
import contextlib
import threading

import tensorflow as tf

from pipeline.ops import native


def each(fn, elems, fn_output_signature):
    """tf.map_fn(fn, elems), without the loop when the batch is statically one example (the
    runner sends copies through the chain one by one): the same values, and a loop's start-up
    costs more than a small draw."""
    first = tf.nest.flatten(elems)[0]
    if first.shape[0] == 1:
        return tf.nest.map_structure(lambda out: out[None],
                                     fn(tf.nest.map_structure(lambda e: e[0], elems)))
    return tf.map_fn(fn, elems, fn_output_signature=fn_output_signature)


def fold_in(seeds, data):
    """A new seed per example, derived from each row of `seeds` and the integer `data`."""
    if native.usable():  # (the same seeds, in one op)
        return native.fold_in(seeds, data)
    return each(lambda s: tf.random.experimental.stateless_fold_in(s, data), seeds,
                fn_output_signature=tf.TensorSpec([2], tf.int32))


def uniform(seeds, low, high, shape=(), dtype=tf.float32):
    """[B, *shape] values, uniform in [low, high) (ints: [low, high)), one draw per example."""
    if native.usable() and dtype in (tf.float32, tf.int32):  # (the same values, in one op)
        return _noted(native.draw(seeds, low, high, shape, dtype))
    return _noted(each(
        lambda s: tf.random.stateless_uniform(shape, s, minval=low, maxval=high, dtype=dtype),
        seeds, fn_output_signature=tf.TensorSpec(shape, dtype)))


def normal(seeds, shape=(), mean=0.0, stddev=1.0):
    return _noted(each(lambda s: tf.random.stateless_normal(shape, s, mean=mean, stddev=stddev),
                       seeds, fn_output_signature=tf.TensorSpec(shape, tf.float32)))


def coin(seeds, probability):
    """[B] bools, True with `probability`."""
    return uniform(seeds, 0.0, 1.0) < probability


def per_example(fn, images, seeds):
    """Apply the single-image op ``fn(image [H, W, C], seed [2]) -> image`` to each example.

    For tf.image's stateless_random_* ops, which draw one value for a whole 4-D batch.
    """
    out = each(lambda pair: fn(pair[0], pair[1]), (images, seeds),
               fn_output_signature=tf.TensorSpec(None, images.dtype))
    return tf.ensure_shape(out, [None, None, None, images.shape[-1]])


def apply_where(mask, fn, images):
    """fn(images) on the examples where `mask` [B] holds, the others unchanged; fn keeps the
    shape. Not tf.where on a [B, 1, 1, 1] mask: TensorFlow's broadcasting select costs more
    than the op itself. One example: a cond (fn runs only if chosen); else whole rows picked."""
    if images.shape[0] == 1:
        return tf.cond(mask[0], lambda: fn(images), lambda: images)
    return tf.raw_ops.Select(condition=mask, x=fn(images), y=images)


def expand(values):
    """[B] -> [B, 1, 1, 1], to broadcast one value per example over its pixels."""
    return tf.reshape(values, [-1, 1, 1, 1])


# --- recording what was drawn (augment/ops: chain.build(record=True)) --------------------------
# While a chain is traced in record mode, each op's draws are noted on its Step, with the
# conditions (probability coins, one_of picks, some_of choices) under which it runs.

_recording = threading.local()


class Step:
    """What one op step drew: its draws [B, ...] in order, and the conditions [(config path,
    mask [B])] that decide whether it ran for each example."""

    def __init__(self, path, name, conditions, seeds):
        self.path, self.name, self.conditions, self.seeds = path, name, conditions, seeds
        self.draws, self.move = [], None  # move: (transforms [B, 8], out height, out width)


class Recorder:
    def __init__(self):
        self.steps, self.conditions, self.step = [], [], None
        self.graph = tf.compat.v1.get_default_graph()


@contextlib.contextmanager
def recording():
    """Note every op step's draws while tracing in here: yields the Recorder."""
    before = getattr(_recording, "current", None)
    _recording.current = Recorder()
    try:
        yield _recording.current
    finally:
        _recording.current = before


def recorder():
    return getattr(_recording, "current", None)


@contextlib.contextmanager
def only_where(path, mask):
    """The steps traced in here run only for the examples where `mask` [B] holds (`path`:
    the config path of what decides it, e.g. augment.chain[3].probability)."""
    current = recorder()
    current.conditions.append((path, mask))
    try:
        yield
    finally:
        current.conditions.pop()


@contextlib.contextmanager
def op_step(path, name, seeds):
    """The draws made in here are this op step's."""
    current = recorder()
    current.step = Step(path, name, list(current.conditions), seeds)
    current.steps.append(current.step)
    try:
        yield current.step
    finally:
        current.step = None


def _noted(values):
    """Note `values` on the op step being recorded (only draws made where the recorder can
    return them: not inside a loop or a branch)."""
    current = recorder()
    if (current is not None and current.step is not None
            and tf.compat.v1.get_default_graph() is current.graph):
        current.step.draws.append(values)
    return values
