"""augbatch's native ops: TensorFlow ops in C++, compiled on this machine on first use. Each
gives the same bytes as the ops it stands in for, which remain the path where it cannot be built.

- native_warp.cc: OpenCV's uint8 warp. The CPU kernel (geometry.transform_with_opencv)
  calls OpenCV through tf.numpy_function, and each call takes Python's lock from a TensorFlow
  thread, where it waits on the Beam thread and the other TensorFlow threads. This op does
  OpenCV's arithmetic for uint8 images (fixed point at 1/32 pixel, weights in 1/32768)
  without Python: the same pixels, checked bit for bit against OpenCV in
  tests/test_native_ops.py. Float32 images keep OpenCV itself: its float arithmetic
  changes between versions.
- native_lookup.cc: for colour ops whose pixels depend only on their own value and channel
  (uint8.multiply_add; tf.image's brightness and contrast, augment.through_levels), a byte
  table per image (and channel), computed on the 256 levels with TensorFlow's ops, the same
  arithmetic as per pixel; and the mean tf.image.adjust_contrast takes, in its own order.
- native_convert.cc: the chain's conversions between uint8 and float32 pixels
  (augment.to_float, augment.to_uint8) in one pass each, with TensorFlow's arithmetic.
- native_mirror.cc: tf.image's random flips of uint8 images: only the chosen images
  mirrored, in place where it can, instead of every image reversed and then selected.
- native_draw.cc: tf.random.stateless_uniform for each row of a batch of seeds in one op
  (draw.uniform, draw.fold_in), with TensorFlow's Philox and distributions: the same values.
- native_sincos.cc: the sine and cosine of a rotation's angles, each as TensorFlow computes
  one value alone (its vectorised path for 8 or more can differ in the last bit): a copy's
  matrix does not depend on its batch.

The library is built with the machine's C++ compiler ($CXX, else g++) against the installed
TensorFlow's headers, once per TensorFlow and source version, into augbatch's cache folder
($AUGBATCH_CACHE_DIR, else $XDG_CACHE_HOME/augbatch, else ~/.cache/augbatch). Without a
compiler, or with AUGBATCH_NATIVE_OPS=0, the ops run as before: slower, the same bytes.
"""
import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import tensorflow as tf

log = logging.getLogger("augbatch")

SOURCES = [Path(__file__).with_name(name)
           for name in ("native_warp.cc", "native_lookup.cc", "native_convert.cc",
                        "native_mirror.cc", "native_draw.cc", "native_sincos.cc")]
# What each source includes of its own (not compiled alone; part of the library's name).
HEADERS = [Path(__file__).with_name("native_op.h")]
# Building takes ~15 s on one core; a compiler that hangs must not hang the run.
BUILD_TIMEOUT_S = 600


def cache_dir():
    """Where augbatch keeps what it builds for this machine."""
    if os.environ.get("AUGBATCH_CACHE_DIR"):
        return Path(os.environ["AUGBATCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "augbatch"


def _flags():
    """The compiler's flags, TensorFlow's included."""
    # Every x86-64 CPU TensorFlow's wheels run on has SSE4.1 (they need AVX). The pixel
    # arithmetic is integer, so the bytes do not depend on the instructions; -ffp-contract=off
    # keeps the float arithmetic as written (no fused multiply-adds): OpenCV's sample points,
    # TensorFlow's conversions.
    vector = ["-msse4.1"] if platform.machine() in ("x86_64", "AMD64") else []
    return ["-O3", "-ffp-contract=off", "-fPIC", "-shared", *vector,
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]


def _compiler_command(output):
    """The compile command, or None without a compiler."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        return None
    return [compiler, *map(str, SOURCES), "-o", str(output), *_flags()]


def _library_path():
    """The built library's path: named by what it was built from and for."""
    key = hashlib.sha256()
    for source in SOURCES + HEADERS:
        key.update(source.read_bytes())
    for part in (tf.__version__, platform.machine(), *_flags()):
        key.update(part.encode())
    return cache_dir() / "ops" / f"native_ops-{key.hexdigest()[:16]}.so"


def _build(path):
    """Compile the library to `path` (written whole, then renamed: processes building it at
    once each finish with a whole file). -> None, or why it failed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as scratch:
        built = Path(scratch) / path.name
        command = _compiler_command(built)
        if command is None:
            return f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH"
        log.info("building its native ops for TensorFlow %s (once, ~15 s)",
                 tf.__version__)
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"the compiler took over {BUILD_TIMEOUT_S} s"
        if done.returncode != 0:
            last = [line for line in done.stderr.splitlines() if "error" in line][-3:]
            return f"the compiler failed: {' | '.join(last) or done.stderr[-300:]}"
        os.replace(built, path)
    return None


@functools.lru_cache(maxsize=None)
def library():
    """The loaded op library, or None (then the ops it stands in for run instead)."""
    if os.environ.get("AUGBATCH_NATIVE_OPS", "1") == "0":
        return None
    try:
        path = _library_path()
        failure = None if path.exists() else _build(path)
        if failure is None:
            return tf.load_op_library(str(path))
    except (OSError, tf.errors.NotFoundError) as error:
        failure = str(error)
    log.warning("running without its native ops (same pixels, slower: warps call "
                "OpenCV through Python): could not build or load them: %s", failure)
    return None


_tracing = threading.local()


@contextlib.contextmanager
def for_cpu(enabled=True):
    """While tracing in here, ops may call the native ops: they have CPU kernels only, and
    XLA cannot compile them (augment.build_chain: the CPU without XLA)."""
    before = getattr(_tracing, "cpu", False)
    _tracing.cpu = enabled
    try:
        yield
    finally:
        _tracing.cpu = before


def usable():
    """Whether the op being traced may call the native ops (for_cpu, and they are built)."""
    return getattr(_tracing, "cpu", False) and library() is not None


def warp(images, transforms, interpolation, fill_mode, fill_value):
    """uint8 images [B, H, W, C] warped by transforms [B, 8] (float64, output -> input) as
    OpenCV's warpAffine / warpPerspective with WARP_INVERSE_MAP would."""
    return library().augbatch_warp(images, transforms, interpolation=interpolation,
                                   fill_mode=fill_mode, fill_value=fill_value)


def levels(count, channels=1):
    """The 256 levels of uint8 pixels as `count` images of 256 x 1 pixels, [count, 256, 1,
    channels]: what ops whose pixels depend only on their value compute their tables on."""
    values = tf.range(256, dtype=tf.int32)[None, :, None, None]
    return tf.cast(tf.broadcast_to(values, [count, 256, 1, channels]), tf.uint8)


def mirror(images, flip, axis):
    """uint8 images [B, H, W, C] with those where flip [B] holds mirrored: axis 1 up-down
    (tf.image.flip_up_down), 2 left-right (tf.image.flip_left_right); the others as they
    were."""
    return library().augbatch_mirror(images, flip, axis=axis)


def lookup(images, tables, vectors=True):
    """uint8 images [B, ..., C] with each value v of image b, channel c replaced by
    tables[b, v, c] (tables [B, 256, C]; [B, 256, 1]: one table for every channel).
    `vectors`: with AVX-512's byte permutes where the CPU has them (False: the scalar loop;
    the same bytes)."""
    return library().augbatch_lookup(images, tables, vectors=vectors)


def level_mean(images, levels, vectors=True):
    """Each channel's mean of levels[b, images[b, ..., c], c] (uint8 images [B, H, W, C],
    levels float32 [B, 256, C]) -> [B, C]: tf.image.adjust_contrast's mean of those pixels,
    bit for bit. `vectors`: with AVX-512 where the CPU has it (False: scalar loops)."""
    return library().augbatch_level_mean(images, levels, vectors=vectors)


def draw(seeds, low, high, shape, dtype):
    """[B, *shape] values: row b is tf.random.stateless_uniform(shape, seeds[b], low, high,
    dtype) (float32 or int32)."""
    return library().augbatch_draw(seeds, tf.convert_to_tensor(low, dtype),
                                   tf.convert_to_tensor(high, dtype),
                                   shape=list(shape))


def fold_in(seeds, data):
    """[B, 2]: row b is tf.random.experimental.stateless_fold_in(seeds[b], data) (data: a
    Python int that fits int32)."""
    return library().augbatch_fold_in(seeds, data=data)


def sin_cos(angles):
    """(tf.sin(angles), tf.cos(angles)) with each value's as TensorFlow computes a tensor of
    one (float32)."""
    return library().augbatch_sin_cos(angles)


def to_float(images):
    """uint8 images -> float32 in [0, 1], as convert_image_dtype computes them."""
    return library().augbatch_to_float(images, scale=1.0 / 255)


def to_uint8(images):
    """float32 images -> uint8: clip to [0, 1], times 255.5, truncated (augment.to_uint8)."""
    return library().augbatch_to_uint8(images)
