"""The TensorFlow side of a worker: the chain traced once per process, on the chosen device, on
batches; then JPEG/PNG encoding of the batch, in the same call.

Speed without changing a byte of what the chain means:
  * steps that only move pixels (flips, quarter turns, crops) at the head of the chain run on
    the uint8 pixels, before the float conversion: a quarter of the memory traffic, identical
    output (they do no arithmetic);
  * with `runtime.xla` on, runs of colour and geometric steps are compiled by XLA into a few
    fused loops (jit_compile on those segments only). ImageProjectiveTransformV3 has no XLA
    kernel, so geometric ops resample with gathers there (geometry.for_xla). XLA draws its
    random numbers differently from TensorFlow's kernels, so this setting is part of the
    config hash. A compiled segment runs on chunks of a size fixed by the image shape: one
    compilation per image shape, and bytes that depend neither on the batch size nor on the
    number of cores. (XLA compiles for the host CPU: a machine of another CPU family may round
    the last bit of a pixel otherwise. Where bytes must match across mixed machines, or for
    inputs of many sizes, leave it off: the default.)
  * the copies of an input are made inside the graph, and augmenting and encoding is one call;
  * on the CPU each copy goes through the chain alone (without XLA: chain and encoder, a few
    copies at once; with XLA: a loop inside the compiled program), so it stays in the core's
    cache instead of streaming a batch of tens of MB through memory at every op, and no pixel
    depends on the other images of its batch. A chain whose pixels cannot depend on their
    batch (build_chain's exact_in_batches: flips, uint8 lookups, colour on levels, uint8
    rotations and shifts) takes CHUNK_COPIES copies at a time, still in the cache, with a
    quarter of the loop's ops.
    Batches amortize the calls into TensorFlow, and the worker keeps several in flight
    (transforms.AugmentAndEncode) to fill the cores.
"""
import contextlib
import dataclasses
import logging
import os
import threading
import typing

import numpy as np
import tensorflow as tf
import threadpoolctl

from pipeline import chain as chain_mod
from pipeline import quiet
from pipeline.errors import UserError
from pipeline.ops import geometry, native, registry

log = logging.getLogger("augbatch")

# A worker warns past this many XLA compilations (one per image shape): inputs of many sizes.
MANY_SHAPES = 16
# One augment call takes at most this many pixels (copies included; 32 copies of 512 x 512):
# ~100 MB as float32 RGB, so large images come in smaller batches.
PIXELS_PER_BATCH = 32 * 512 * 512
# Decoded images waiting for a full batch of their shape (transforms.BatchByShape), at most.
MAX_WAITING_BYTES = 256 << 20
# Compiled segments run on chunks of about this many pixels (at most 16 images): a program
# for one chunk shape per image shape, whatever the batch size or the machine, so the bytes
# are the same everywhere; XLA may round differently for another chunk shape.
PIXELS_PER_CHUNK = 4 * 512 * 512
# Copies augmented at once when they go one by one (on the CPU without XLA).
PARALLEL_COPIES = 2
# Copies a chain whose pixels do not depend on their batch (build_chain's exact_in_batches)
# takes at once in its loop over the copies: the loop's own ops and the chain's are paid once
# per 4 copies, and 4 images still fit in a core's cache through the chain. 256x256 colour
# chain, interleaved: 13% less CPU than one copy at a time (2: 6%, 8: 10%, 16: 7%); 512x512:
# level.
CHUNK_COPIES = 4
# ... where that many copies hold at most this many pixels (4 of 256 x 256): 4 copies of
# 512 x 512 do not stay in the cache (standard chain, 512 x 512: 7% more CPU than one at a
# time).
CHUNK_PIXELS = 4 * 256 * 256
# Batches a worker has in TensorFlow at once (transforms.AugmentAndEncode), at least; more
# with more op threads (configure_threads).
IN_FLIGHT = 4
# Ops that run Python inside a graph (tf.py_function, tf.numpy_function).
PYTHON_OPS = frozenset(["EagerPyFunc", "PyFunc", "PyFuncStateless"])


def chunk_rows(shape):
    """Images per compiled chunk for images of this [H, W, ...] shape."""
    return max(1, min(16, PIXELS_PER_CHUNK // max(1, int(shape[0]) * int(shape[1]))))


def inputs_per_batch(shape, job):
    """How many inputs of this [H, W, ...] shape one augment call takes: `batch_size` images,
    copies included, and at most PIXELS_PER_BATCH pixels; always at least one input."""
    copies = max(1, job.copies)
    pixels = int(shape[0]) * int(shape[1]) * copies
    return max(1, min(job.batch_size // copies, PIXELS_PER_BATCH // max(1, pixels)))


# --- devices and threads -----------------------------------------------------------------------

def choose_device(requested, gpu_names):
    """The TensorFlow device the chain runs on: 'auto' takes the first GPU if there is one,
    'gpu' requires one, 'cpu' never uses one."""
    if requested == "cpu" or (requested == "auto" and not gpu_names):
        return "/device:CPU:0"
    if not gpu_names:
        raise UserError("--device gpu: TensorFlow sees no GPU on this machine",
                        hint="check `nvidia-smi` and that this TensorFlow build has CUDA "
                             "(pip install tensorflow[and-cuda]); or use --device auto / cpu")
    return "/device:GPU:0"


def pick_device(requested):
    """choose_device for this machine; turns on memory growth for the GPUs (so several
    workers can share one) and logs where the chain runs."""
    gpus = tf.config.list_physical_devices("GPU")
    device = choose_device(requested, [gpu.name for gpu in gpus])
    if "GPU" in device:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # TensorFlow already started: the setting is fixed
                log.debug("memory growth unchanged for %s", gpu.name)
        log.info("augmenting on %s (of %d GPUs visible)", gpus[0].name, len(gpus))
    else:
        log.info("augmenting on the CPU%s", "" if requested == "cpu" else " (no GPU visible)")
    return device


def for_workers(job, options):
    """`job` with device and threads settled for these Beam options, when the workers run on
    this machine (the DirectRunner): --device gpu fails now if TensorFlow sees no GPU, not in
    a worker; multi-process workers share the cores unless --tf-threads says otherwise."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    if not str(options.view_as(StandardOptions).runner or "").endswith("DirectRunner"):
        return job  # remote workers: each checks its own device in setup()
    choose_device(job.device, [gpu.name for gpu in tf.config.list_physical_devices("GPU")])
    direct = options.view_as(DirectOptions)
    cores = os.cpu_count() or 1
    workers = direct.direct_num_workers or cores  # Beam: 0 = one per core
    if not job.tf_threads and direct.direct_running_mode == "multi_processing" and workers > 1:
        return dataclasses.replace(job, tf_threads=max(1, cores // workers))
    return job


def configure_threads(tf_threads, xla=False):
    """TensorFlow's thread pools in this process: every op on one thread, `tf_threads` ops at
    once (0: one per core). The cores fill with several batches and copies at once, which
    costs less CPU than splitting the ops of small images across threads; and XLA splits its
    loops by the number of op threads, which can round a pixel's last bit otherwise: with
    one, a compiled chain's bytes do not depend on the machine's cores. Only possible before
    TensorFlow's runtime starts; later calls keep what is set."""
    # numpy's BLAS on one thread too: with its own pool, every small np.linalg call (the
    # geometry of each copy, its targets) woke a second thread that then spun on
    # sched_yield between calls, a core's worth of CPU for nothing.
    threadpoolctl.threadpool_limits(1, user_api="blas")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        if tf_threads:
            tf.config.threading.set_inter_op_parallelism_threads(tf_threads)
    except RuntimeError:
        log.debug("TensorFlow already started; thread settings unchanged")
    if xla and tf.config.threading.get_intra_op_parallelism_threads() != 1:
        log.warning("TensorFlow was started before augbatch could run each op on one thread: "
                    "with XLA, the last bit of some pixels may depend on this machine's cores")


# --- pixel conversions and encoding ------------------------------------------------------------

def to_float(images):
    """convert_image_dtype(images, float32); on the CPU in one pass (native.to_float)."""
    if native.usable():
        return native.to_float(images)
    return tf.image.convert_image_dtype(images, tf.float32)


def to_uint8(images):
    """convert_image_dtype(clip(images, 0, 1), uint8, saturate=True) in three passes, not six:
    after the clip, x * 255.5 is within [0, 255.5], so its saturating cast is a plain cast;
    and ClipByValue clips in one pass, where tf.clip_by_value takes two (min, then max: the
    same values). On the CPU the three in one (native.to_uint8)."""
    if native.usable():
        return native.to_uint8(images)
    clipped = tf.raw_ops.ClipByValue(t=images, clip_value_min=0.0, clip_value_max=1.0)
    return tf.cast(clipped * 255.5, tf.uint8)


def through_levels(chain, levels):
    """fn(uint8 images, seeds) -> to_uint8(chain(to_float(images))). Where the native ops run
    and the chain has a form on levels (chain.build_levels: colour ops whose pixels depend
    only on their value, channel and the image's channel means), the same bytes from the 256
    levels of each image and channel: computed there with the chain's own arithmetic, the
    means taken from the pixels in tf.image's order (native.level_mean), then looked up. Two
    passes over uint8 pixels instead of about ten over float32 ones."""
    def run(images, seeds):
        if not native.usable():
            return to_uint8(chain(to_float(images), seeds))
        shape = tf.shape(images)
        count, channels = shape[0], shape[3]
        values = to_float(native.levels(count, channels))

        def mean_of(values):
            means = native.level_mean(images, tf.reshape(values, [count, 256, channels]))
            return tf.reshape(means, [count, 1, 1, channels])
        tables = to_uint8(levels(values, seeds, mean_of))
        return native.lookup(images, tf.reshape(tables, [count, 256, channels]))
    return run


def _encode_one(image, as_png, quality):
    return tf.cond(as_png, lambda: tf.io.encode_png(image),
                   lambda: tf.io.encode_jpeg(image, quality=quality))


def _augment_encode_each(chain, images, copy_of, seeds, as_png, quality, parallel,
                         record=None):
    """chain + encode for one copy at a time: (encoded bytes per copy, output shape, notes).
    `record`: build_record's, for the notes of each copy, or None. A chain whose pixels do
    not depend on their batch takes CHUNK_COPIES copies at a time where they fit in
    CHUNK_PIXELS (the same bytes either way), its notes drawn for the whole batch at once."""
    if not chain.exact_in_batches:
        return _augment_encode_one_by_one(chain, images, copy_of, seeds, as_png, quality,
                                          parallel, record)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)  # (no int32 overflow)
    encoded, shape = tf.cond(
        pixels <= CHUNK_PIXELS // CHUNK_COPIES,
        lambda: _augment_encode_in_chunks(chain, images, copy_of, seeds, as_png, quality,
                                          parallel),
        lambda: _augment_encode_one_by_one(chain, images, copy_of, seeds, as_png, quality,
                                           parallel)[:2])
    return encoded, shape, record.batched(seeds, height, width) if record else ()


def _augment_encode_one_by_one(chain, images, copy_of, seeds, as_png, quality, parallel,
                               record=None):
    """_augment_encode_each's result, the notes in the chain's loop where they can be."""
    prepared = record.prepare(tf.shape(images)[1], tf.shape(images)[2]) if record else None
    inline = prepared is not None and prepared.in_chain_loop

    def one(args):
        index, seed, png = args
        image = chain(images[index][None], seed[None])[0]
        out = (_encode_one(image, png, quality), tf.shape(image))
        return out + (prepared.notes_of(seed),) if inline else out
    encoded, shapes, *packed = tf.map_fn(
        one, (copy_of, seeds, as_png), parallel_iterations=parallel,
        fn_output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([3], tf.int32))
        + ((prepared.signature,) if inline else ()))
    if inline:
        notes = record.unpack(packed[0])
    else:
        notes = record(seeds, tf.shape(images)[1], tf.shape(images)[2], prepared) if record else ()
    # (shapes: all alike; and defined for no copies)
    return encoded, tf.reduce_max(shapes, axis=0), notes


def _augment_encode_in_chunks(chain, images, copy_of, seeds, as_png, quality, parallel):
    """(encoded bytes per copy, output shape): CHUNK_COPIES copies through the chain at a
    time (the last chunk filled with copies of the first image, then left out)."""
    count = tf.shape(copy_of)[0]
    missing = (-count) % CHUNK_COPIES

    def chunks(values):  # [count, ...] -> [chunks, CHUNK_COPIES, ...]
        padded = tf.pad(values, [[0, missing]] + [[0, 0]] * (values.shape.rank - 1))
        return tf.reshape(padded, tf.concat([[-1, CHUNK_COPIES], tf.shape(values)[1:]], 0))

    def chunk(args):
        index, seed, png = args
        out = chain(tf.gather(images, index), seed)
        return (tf.stack([_encode_one(out[i], png[i], quality) for i in range(CHUNK_COPIES)]),
                tf.shape(out)[1:])
    encoded, shapes = tf.map_fn(
        chunk, (chunks(copy_of), chunks(seeds), chunks(as_png)), parallel_iterations=parallel,
        fn_output_signature=(tf.TensorSpec([CHUNK_COPIES], tf.string),
                             tf.TensorSpec([3], tf.int32)))
    return tf.reshape(encoded, [-1])[:count], tf.reduce_max(shapes, axis=0)


def _encode_batch(images, as_png, quality):
    return tf.map_fn(lambda pair: _encode_one(pair[0], pair[1], quality), (images, as_png),
                     fn_output_signature=tf.TensorSpec([], tf.string))


# --- the chain in segments ---------------------------------------------------------------------

def _is_op(step, trait):
    """A step that is one op with this registry trait (uint8_exact, xla), always applied."""
    return ("op" in step and step["probability"] == 1.0
            and getattr(registry.get(step["op"]), trait))


def _resamples_alone(step):
    """A geometric op that only resamples (no per-pixel work after): any pixel type will do."""
    if "op" not in step:
        return False
    fn = registry.get(step["op"]).build(step["params"])
    return isinstance(fn, geometry.Projective) and fn.finish is None and fn.standalone is None


def _compilable(step):
    """A colour op XLA compiles, or a purely geometric op (resampled with gathers there)."""
    return _is_op(step, "xla") or (_resamples_alone(step) and step["probability"] == 1.0)


def _exact_in_batches(steps):
    """Whether a uint8 stage gives each image the same pixels in a batch of any size, traced
    with the native ops: ops that keep the size and only move bytes or look them up, and
    resamples (native.warp, image by image) whose matrices are (geometry.Projective's
    exact_in_batches), one at a time (two in a row would be fused by a matrix product).
    (Colour computed on levels is too: elementwise arithmetic on each image's own levels and
    the native means.) TensorFlow's reductions, transcendental functions and matrix products
    over a batch vectorise by their place in it."""
    resamples = [_resamples_alone(step) and step["probability"] == 1.0
                 and registry.get(step["op"]).build(step["params"]).exact_in_batches
                 for step in steps]
    return not any(a and b for a, b in zip(resamples, resamples[1:])) and all(
        resample or ((_is_op(step, "uint8_exact") or _is_op(step, "uint8_native"))
                     and registry.get(step["op"]).keeps_shape)
        for step, resample in zip(steps, resamples))


def plan(steps, xla, uint8_geometry=False):
    """The chain as stages [(kind, start index, steps)], in order, kind one of
    'uint8' (the head before the float conversion: ops that only move pixels or compute on
    uint8 themselves; with `uint8_geometry` the tail after it too), 'xla' or 'plain'.
    `uint8_geometry`: geometric ops that only resample join the head and tail
    (runtime.kernel opencv-uint8), where they resample uint8 pixels."""
    steps = list(steps)

    def stays_uint8(step):  # (an op XLA compiles goes to XLA instead: there it costs nothing)
        return ((_is_op(step, "uint8_exact") and not (xla and _is_op(step, "xla")))
                or _is_op(step, "uint8_native")
                or (uint8_geometry and _resamples_alone(step)))
    head = 0
    while head < len(steps) and stays_uint8(steps[head]):
        head += 1
    tail = len(steps)
    while uint8_geometry and tail > head and stays_uint8(steps[tail - 1]):
        tail -= 1
    stages = [("uint8", 0, steps[:head])] if head else []
    for index in range(head, tail):
        kind = "xla" if xla and _compilable(steps[index]) else "plain"
        if stages and stages[-1][0] == kind and stages[-1][1] >= head:
            stages[-1][2].append(steps[index])
        else:
            stages.append((kind, index, [steps[index]]))
    if tail < len(steps):
        stages.append(("uint8", tail, steps[tail:]))
    return stages


class _Compiled:
    """A chain segment compiled by XLA, run on chunks of `rows` images (the batch padded to
    whole chunks): one compilation per image shape, the same program whatever the batch (and
    fewer program launches than one image per call). The chunks of a batch run side by side
    (map_fn's parallel iterations): busier cores."""

    def __init__(self, fn, dtype, one_at_a_time=True):
        def traced(images, seeds):
            with geometry.for_xla():
                if not one_at_a_time:  # a GPU: the whole chunk in each kernel
                    return fn(images, seeds)
                # On a CPU a loop inside the program takes the images one at a time: each
                # stays in the cache through all the fused steps (a fifth less CPU than the
                # whole chunk at once), and its bytes do not depend on its place in the chunk.
                return _one_at_a_time(fn, dtype)(images, seeds)
        self.fn = tf.function(traced, jit_compile=True, autograph=False)
        self.dtype = dtype

    def __call__(self, images, seeds, rows):
        count, shape = tf.shape(images)[0], tf.shape(images)
        pad = (-count) % rows
        images = tf.reshape(tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]]),
                            [-1, rows, shape[1], shape[2], shape[3]])
        seeds = tf.reshape(tf.pad(seeds, [[0, pad], [0, 0]]), [-1, rows, 2])
        out = tf.map_fn(lambda chunk: self.fn(chunk[0], chunk[1]), (images, seeds),
                        fn_output_signature=tf.TensorSpec([None, None, None, None], self.dtype))
        out_shape = tf.shape(out)
        return tf.reshape(out, [-1, out_shape[2], out_shape[3], out_shape[4]])[:count]


def resample_kernel(kernel, xla=False, on_cpu=True):
    """The kernel geometric ops resample with: OpenCV's only on the CPU without XLA (compiled
    segments resample with gathers; a GPU runs TensorFlow's)."""
    return "opencv" if kernel.startswith("opencv") and on_cpu and not xla else "tensorflow"


def build_chain(steps, xla=False, on_cpu=True, parallel=None, kernel="tensorflow"):
    """fn(images uint8 [B, H, W, C], seeds int32 [B, 2], rows) -> uint8 images, built from the
    plan: the same draws as chain.build (every step keeps its seed index), faster. Compiled
    segments run on chunks of `rows` images (chunk_rows), for the CPU or else a GPU.
    `parallel`: how many images plain steps take at once when they go one at a time.
    `kernel`: runtime.kernel, the resample kernel of geometric ops (resample_kernel)."""
    resample = resample_kernel(kernel, xla, on_cpu)
    stages = plan(steps, xla, uint8_geometry=kernel == "opencv-uint8" and resample == "opencv")
    # The float32 conversion before the first stage that is not uint8, back after the last;
    # none for a chain of uint8 stages only (the round trip gives back every uint8 value, at
    # the cost of seven passes over the pixels).
    float_stages = [index for index, (kind, _, _) in enumerate(stages) if kind != "uint8"]
    first, last = (float_stages[0], float_stages[-1]) if float_stages else (None, None)
    parts = []  # (compiled?, fn(images, seeds) -> images)
    # Whether each image's pixels are the same in a batch of any size (run.exact_in_batches):
    # with the native ops, see _exact_in_batches.
    exact = on_cpu and not xla and native.library() is not None
    for index, (kind, start, part) in enumerate(stages):
        fn = chain_mod.build(part, start=start)
        levels = (chain_mod.build_levels(part, start=start)
                  if kind == "plain" and first == index == last else None)
        exact = exact and (levels is not None or (kind == "uint8" and _exact_in_batches(part)))
        if levels is not None:
            fn = through_levels(fn, levels)
        else:
            if index == first:
                fn = _after(to_float, fn)
            if index == last:
                fn = _before(fn, to_uint8)
        parts.append((kind == "xla", fn))
    runs = [(compiled, _compose(fns)) for compiled, fns in _runs(parts)]
    mixed = on_cpu and any(compiled for compiled, _ in runs)
    runs = [(_Compiled(fn, _dtype(index, runs), on_cpu) if compiled
             else _one_at_a_time(fn, _dtype(index, runs), parallel) if mixed else fn)
            for index, (compiled, fn) in enumerate(runs)]

    def run(images, seeds, rows=1):
        # (traced now: the kernel is chosen for this graph)
        with geometry.kernel(resample), native.for_cpu(on_cpu and not xla):
            for fn in runs:
                images = (fn(images, seeds, rows) if isinstance(fn, _Compiled)
                          else fn(images, seeds))
        return images
    run.compiled = [fn for fn in runs if isinstance(fn, _Compiled)]
    run.exact_in_batches = exact
    return run


def build_geometry(steps, xla=False):
    """fn(seeds [B, 2], height, width) -> [(transforms [B, 8], out height, out width)]: where
    build_chain's pixels go (chain.build_geometry per stage of the same plan; a compiled
    stage's geometry is compiled too, since XLA draws other random numbers)."""
    parts = []
    for kind, start, part in plan(steps, xla):
        fn = chain_mod.build_geometry(part, start=start)
        if kind == "xla":
            fn = tf.function(lambda seeds, height, width, fn=fn: [
                tuple(move) for move in fn(seeds, height, width)], jit_compile=True,
                autograph=False)
        parts.append(fn)

    def run(seeds, height, width):
        moves = []
        for fn in parts:
            for move in fn(seeds, height, width):
                moves.append(tuple(move))
                height, width = move[1], move[2]
        return moves
    return run


class CopyNotes(typing.NamedTuple):
    """build_record's `prepare`: one copy's notes, traced for images of one size."""
    notes_of: typing.Callable  # fn(seed [2]) -> the copy's notes, packed (_pack)
    signature: object  # their TensorSpecs
    in_chain_loop: bool  # whether they may join the chain's loop (no stateful op)


def build_record(steps, xla=False, channels=3, parallel=None, on_cpu=False):
    """fn(seeds [B, 2], height, width) -> [notes per op step] (chain.build_record per stage of
    the same plan, as build_geometry; a compiled stage's notes are compiled too, since XLA
    draws other random numbers); `fn.steps()`: their (path, op, conditions), once traced.
    `on_cpu`: drawn with the native ops where build_chain's draws are (the same values; in
    the chain's loop the two are then the same ops, made once).
    Its own loop over the copies (`parallel` at once: the chain's); or, through
    `fn.prepare` and `fn.unpack`, a part of the chain's loop over its copies (fewer ops: a
    loop of its own costs, and the draws the chain makes too are made once there). Either
    way TensorFlow prunes the pixel work of the blank image the ops are traced on, but for
    stateful ops (a Python op's, a Keras layer's): those keep a loop of their own, where
    that work is done once per copy (inside the chain's loop it was not pruned: 0.1-0.25 ms
    per 512x512 copy)."""
    parts = []
    for kind, start, part in plan(steps, xla):
        fn = chain_mod.build_record(part, start)
        traced = fn
        if kind == "xla":
            traced = tf.function(fn, jit_compile=True, autograph=False)
        parts.append((fn, traced))
    layout = []  # how one copy's notes are packed (_pack), once traced

    def noted(seeds, images):  # every part's notes
        notes = []
        with native.for_cpu(on_cpu and not xla):
            for _, traced in parts:
                part_notes, images = traced(seeds, images)
                notes += part_notes
        return notes

    def one(seed, images):  # one copy: a batch of one draws without loops
        packed, layout[:] = _pack(noted(seed[None], images))
        return packed

    def blank(height, width):  # one image of the input's size for all (only its size is read)
        return tf.zeros(tf.stack([1, height, width, channels]))

    def traced_one(blank):
        """`one` traced once for images like `blank`, and its outputs' TensorSpecs: a loop
        needs them before it traces its body, and tracing `one` again there would double the
        start-up's tracing of the record."""
        traced = tf.function(one, autograph=False).get_concrete_function(
            tf.TensorSpec([2], tf.int32), blank)
        return traced, tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                                             traced.structured_outputs)

    def prepare(height, width):
        images = blank(height, width)
        traced, signature = traced_one(images)
        stateful = any(op.op_def.is_stateful for op in traced.graph.get_operations())
        return CopyNotes(lambda seed: traced(seed, images), signature, not stateful)

    def run(seeds, height, width, prepared=None):
        # The copies one at a time inside the graph: one call for the batch, no loop per draw.
        prepared = prepared or prepare(height, width)
        return unpack(tf.map_fn(prepared.notes_of, seeds, fn_output_signature=prepared.signature,
                                parallel_iterations=parallel or PARALLEL_COPIES))

    def unpack(packed):
        """The packed notes of the copies [B, ...] -> the notes."""
        return _unpack(packed, *layout)

    def batched(seeds, height, width):
        """The notes of every copy, the ops traced once for the whole batch: no loop, where
        the draws are the native ops (one each for the batch) and no op is stateful."""
        return noted(seeds, blank(height, width))
    run.steps = lambda: [step for fn, _ in parts for step in fn.steps]
    run.prepare, run.unpack, run.batched = prepare, unpack, batched
    return run


def _pack(notes):
    """One copy's notes (of a batch of one) as few tensors, since each output of a loop over
    the copies costs more than most notes: those of a fixed size flattened and joined into
    one vector per dtype, the others as they are. -> ((vectors, others), layout: _unpack's)."""
    flat = tf.nest.flatten(notes)
    shapes = [_copy_shape(t) for t in flat]
    dtypes = list(dict.fromkeys(t.dtype for t, s in zip(flat, shapes) if s is not None))
    vectors = tuple(tf.concat([t if t.shape.rank == 1 else tf.reshape(t, [-1])
                               for t, s in zip(flat, shapes) if s is not None
                               and t.dtype == dtype], 0) for dtype in dtypes)
    others = tuple(t[0] if t.shape.rank else t for t, s in zip(flat, shapes) if s is None)
    return (vectors, others), (notes, shapes, dtypes)


def _copy_shape(note):
    """A note's shape for one copy if it is fixed: [1, ...] -> [...]; a scalar (a size, the
    same for all copies) as it is; else None."""
    shape = note.shape
    if shape.rank == 0:
        return shape
    if shape.rank and shape[0] == 1 and shape[1:].is_fully_defined():
        return shape[1:]
    return None


def _unpack(packed, notes, shapes, dtypes):
    """_pack's tensors with a leading batch dimension -> the notes, each [B, ...]."""
    vectors, others = packed
    flat = tf.nest.flatten(notes)
    pieces = {dtype: iter(tf.split(vector, [s.num_elements() for t, s in zip(flat, shapes)
                                            if s is not None and t.dtype == dtype], axis=1))
              for dtype, vector in zip(dtypes, vectors)}
    others = iter(others)
    return tf.nest.pack_sequence_as(notes, [
        next(others) if s is None else tf.reshape(next(pieces[t.dtype]), [-1] + s.as_list())
        for t, s in zip(flat, shapes)])


def _nested_like(layout, values):
    """tf.nest.pack_sequence_as(layout, values) for the lists, tuples and dicts (keys in
    tf.nest.flatten's sorted order) of the notes: `values` an iterator."""
    if isinstance(layout, dict):
        return {key: _nested_like(layout[key], values) for key in sorted(layout)}
    if isinstance(layout, (list, tuple)):
        return type(layout)(_nested_like(part, values) for part in layout)
    return next(values)


def _dtype(index, runs):
    """What run `index` of the chain returns: float32 pixels, uint8 after the last run."""
    return tf.uint8 if index == len(runs) - 1 else tf.float32


def _one_at_a_time(fn, dtype, parallel=None):
    """fn on each image alone (the plain runs between compiled ones, on the CPU: as there, no
    image's bytes depend on the others in the batch), `parallel` images at once."""
    return lambda images, seeds: tf.map_fn(
        lambda pair: fn(pair[0][None], pair[1][None])[0], (images, seeds),
        parallel_iterations=parallel or PARALLEL_COPIES,
        fn_output_signature=tf.TensorSpec([None, None, None], dtype))


def _after(first, fn):
    return lambda images, seeds: fn(first(images), seeds)


def _before(fn, last):
    return lambda images, seeds: last(fn(images, seeds))


def _runs(parts):
    """Consecutive parts grouped by whether they are compiled: [(compiled, [fns])]."""
    runs = []
    for compiled, fn in parts:
        if runs and runs[-1][0] == compiled:
            runs[-1][1].append(fn)
        else:
            runs.append((compiled, [fn]))
    return runs


def _compose(fns):
    def run(images, seeds):
        for fn in fns:
            images = fn(images, seeds)
        return images
    return run


def _calls_python(concrete):
    """Whether a traced function runs Python somewhere (in its graph or a function it calls)
    that may call TensorFlow back: the OpenCV resample kernel never does."""
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node) + [node for f in graph.library.function for node in f.node_def]
    return any(node.op in PYTHON_OPS
               and node.attr["token"].s.decode() not in geometry.OPENCV_TOKENS
               for node in nodes)


def _trace(fn, signature):
    """fn traced now (not on the first batch, where a failure would look like bad inputs).
    Without AutoGraph, which takes seconds to convert a chain whose code is graph code
    already; with it only for an op that needs it (same graph either way)."""
    try:
        return tf.function(fn, input_signature=signature,
                           autograph=False).get_concrete_function()
    except Exception:  # noqa: BLE001 - Python control flow on tensors somewhere in an op
        log.debug("tracing the chain with AutoGraph", exc_info=True)
        return tf.function(fn, input_signature=signature).get_concrete_function()


# --- the runner --------------------------------------------------------------------------------

@tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string)])
def _decode_images(data):
    """ChainRunner.decode_images' graph: one per process, whatever the job."""
    with tf.device("/device:CPU:0"):  # (DecodeImage.decode's op: the same pixels)
        return tf.map_fn(lambda one: tf.io.decode_image(one, channels=3, expand_animations=False),
                         data, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


class ChainRunner:
    """Augments and encodes batches for one job; built once per worker process (transforms.py
    shares it between the worker's threads)."""

    def __init__(self, job, device=None):
        """`device`: a TensorFlow device name, instead of the one job.device picks."""
        configure_threads(job.tf_threads, job.xla)
        self.device = device or pick_device(job.device)
        self.job, self.copies, self.quality = job, job.copies, job.quality
        # Enough batches in flight for every op thread: each op runs on one.
        self.in_flight = max(IN_FLIGHT, job.tf_threads or os.cpu_count() or 1)
        self._one_call = contextlib.nullcontext()
        # (the decoder's graph now: called first from several threads at once, the function
        # would be traced once per thread, with TensorFlow's warning about retracing)
        self._decode_images = _decode_images.get_concrete_function()
        self._build(PARALLEL_COPIES)
        if _calls_python(self._augment_encode):
            # A step runs Python (a python op, a Keras layer traced per image size), which
            # may call TensorFlow again: several such calls at once could leave every
            # TensorFlow thread waiting on another. Such a chain runs one copy at a time,
            # one call at a time in this process (a lock: whatever thread calls).
            self.in_flight, self._one_call = 1, threading.Lock()
            self._build(1)
        if self.chain.compiled:
            quiet.spend_xla_notice()
        self._shapes = set()
        self._geometry = None  # traced on the first input with targets
        self._geometry_lock = threading.Lock()

    def geometry(self, seeds, height, width):
        """Where each copy's pixels go: [(transforms [copies, 8], out height, out width)] as
        numpy, for inputs with targets (targets.carry)."""
        with self._geometry_lock:
            if self._geometry is None:
                self._geometry = _trace(build_geometry(self.job.chain, self.job.xla),
                                        [tf.TensorSpec([None, 2], tf.int32),
                                         tf.TensorSpec([], tf.int32),
                                         tf.TensorSpec([], tf.int32)])
        with self._one_call:
            moves = self._geometry(seeds, np.int32(height), np.int32(width))
        return [(t.numpy(), int(h), int(w)) for t, h, w in moves]

    def _build(self, parallel):
        job = self.job
        self.chain = build_chain(job.chain, xla=job.xla, on_cpu="CPU" in self.device,
                                 parallel=parallel, kernel=job.kernel)
        images_spec = tf.TensorSpec([None, None, None, job.channels], tf.uint8)
        seeds_spec = tf.TensorSpec([None, 2], tf.int32)
        png_spec = tf.TensorSpec([None], tf.bool)
        rows_spec = tf.TensorSpec([], tf.int32)

        # On the CPU without XLA each copy goes through chain and encoder alone (see the
        # module's doc; on a batch, Eigen computes a vector's lanes and its tail differently,
        # so a pixel's last bit could depend on its neighbours). A GPU wants whole batches.
        one_by_one = not self.chain.compiled and "CPU" in self.device
        # What was done to each copy (augment/ops), noted in the same call.
        record = (build_record(job.chain, job.xla, job.channels, parallel,
                               on_cpu="CPU" in self.device)
                  if job.record_ops and any(chain_mod.op_paths(job.chain)) else None)

        def augment_encode_nested(images, seeds, as_png, rows):
            # Copy i of the batch is input copy_of[i].
            copy_of = tf.repeat(tf.range(tf.shape(images)[0]), self.copies)
            if one_by_one:
                return _augment_encode_each(self.chain, images, copy_of, seeds, as_png,
                                            self.quality, parallel, record)
            with tf.device(self.device):
                # A gather copies whole images (as fast as memcpy); tf.repeat's broadcast is
                # several times slower.
                out = self.chain(tf.gather(images, copy_of), seeds, rows)
            notes = record(seeds, tf.shape(images)[1], tf.shape(images)[2]) if record else ()
            with tf.device("/device:CPU:0"):
                return _encode_batch(out, as_png, self.quality), tf.shape(out)[1:], notes

        def augment_encode(images, seeds, as_png, rows):
            # The notes leave the graph flat: TensorFlow's nesting of a call's outputs, and
            # tf.nest's, cost ~20 us per copy in Python; augment_encode nests them again.
            encoded, shape, notes = augment_encode_nested(images, seeds, as_png, rows)
            self._notes_layout = tf.nest.map_structure(lambda _: None, notes)
            return encoded, shape, tuple(tf.nest.flatten(notes))

        def encode(images, as_png):
            return _encode_batch(images, as_png, self.quality)

        self._augment_encode = _trace(augment_encode,
                                      [images_spec, seeds_spec, png_spec, rows_spec])

        self._record_steps = record.steps() if record else None
        self._encode = _trace(encode, [images_spec, png_spec])

    def decode_images(self, data):
        """RGB JPEGs and PNGs of one size (bytes each) -> uint8 [N, H, W, 3], a tensor for
        augment_encode: decoded in TensorFlow's threads, to the pixels DecodeImage.decode
        gives (transforms.DecodeImage's in_graph)."""
        return self._decode_images(tf.constant(data))

    def augment_encode(self, images, seeds, formats):
        """`copies` augmented copies of each image, encoded.

        images uint8 [N, H, W, C] (an array, or decode_images' tensor); seeds int32
        [N * copies, 2] and formats ('jpeg' or 'png') per copy, copies of one image together.
        -> (encoded bytes per copy, output shape, what was done to each copy: a list of one
        dict per op step (chain.op_records), for the augment/ops feature; None when the job
        does not record its ops).
        """
        self._note_shape(tuple(images.shape))
        as_png = np.array([f == "png" for f in formats])
        rows = np.int32(chunk_rows(images.shape[1:3]))
        with self._one_call:
            encoded, shape, notes = self._augment_encode(images, seeds, as_png, rows)
        count = len(seeds)
        if not self.job.record_ops:
            ops = [None] * count
        elif self._record_steps is None:  # plain copies: nothing done
            ops = [[] for _ in range(count)]
        else:
            values = iter([t.numpy() for t in notes])
            nested = _nested_like(self._notes_layout, values)
            assert next(values, None) is None, "the notes do not match their layout"
            ops = chain_mod.op_records(self._record_steps, nested, count)
        return ([bytes(b) for b in encoded.numpy()], tuple(int(s) for s in shape.numpy()), ops)

    def encode(self, images, formats):
        as_png = np.array([f == "png" for f in formats])
        return [bytes(b) for b in self._encode(images, as_png).numpy()]

    def _note_shape(self, shape):
        if not self.chain.compiled or shape[1:] in self._shapes:
            return
        self._shapes.add(shape[1:])
        if len(self._shapes) == MANY_SHAPES:
            log.warning("XLA has compiled the chain for %d image sizes (about a second "
                        "each); for inputs of many sizes leave XLA off (runtime.xla: false, "
                        "--no-xla)", MANY_SHAPES)
