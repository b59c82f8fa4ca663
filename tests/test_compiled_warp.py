"""The compiled warp (pipeline/ops/compiled_warp.cc): OpenCV's uint8 warp as a TensorFlow op,
built on this machine. Its pixels are OpenCV's bit for bit, so a run writes the same bytes with
it or without it; it is built once per TensorFlow into augbatch's cache, and without a compiler
the warps call OpenCV as before and say so."""
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipeline.ops import compiled_warp, geometry
from tests.conftest import run_job, shard_bytes
from tests.test_opencv_kernel import parallel_and_batch_free
from tests.test_performance_paths import STANDARD, photos


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
    """The same warps by OpenCV itself, as the kernel calls it without the compiled warp."""
    options = geometry._warp_options(interpolation, fill_mode, float(fill_value))
    return geometry._warp(images, matrices, options)


@pytest.mark.parametrize("interpolation", geometry.INTERPOLATIONS)
@pytest.mark.parametrize("fill_mode", geometry.FILL_MODES)
def test_the_compiled_warp_writes_opencvs_pixels(interpolation, fill_mode):
    assert compiled_warp.library() is not None, "this machine has g++: the warp must build"
    rng = np.random.default_rng(7)
    photo = np.concatenate([photos(1, 61, 83)[0]] * 2, axis=-1)  # real pixels, 6 channels
    for (height, width), channels in (((61, 83), 3), ((61, 83), 1), ((40, 33), 4),
                                      ((25, 30), 5), ((1, 9), 3), ((7, 1), 1), ((2, 2), 3)):
        images = np.ascontiguousarray(photo[None, :height, :width, :channels])
        matrices = _matrices(height, width, rng)
        images = np.repeat(images, len(matrices), axis=0)
        for fill_value in (0.0, 128.4, 300.0):
            ours = compiled_warp.warp(images, matrices, interpolation, fill_mode,
                                      fill_value).numpy()
            ref = opencv(images, matrices, interpolation, fill_mode, fill_value)
            for index, (a, b) in enumerate(zip(ours, ref)):
                assert np.array_equal(a, b), (height, width, channels, fill_value, index,
                                              int((a != b).sum()))


def test_the_cpu_kernel_runs_it_without_python_and_writes_the_same_bytes(monkeypatch):
    """The default kernel's uint8 warp is the compiled op: the runner's graph calls no Python,
    and its copies are those of OpenCV called through Python."""
    images, seeds, compiled = parallel_and_batch_free(STANDARD)
    monkeypatch.setenv("AUGBATCH_COMPILED_WARP", "0")
    compiled_warp.library.cache_clear()
    try:
        assert compiled_warp.library() is None
        assert parallel_and_batch_free(STANDARD, "opencv_warp")[2] == compiled
    finally:
        monkeypatch.delenv("AUGBATCH_COMPILED_WARP")
        compiled_warp.library.cache_clear()


def test_a_run_writes_the_same_shards_with_or_without_it(small_folder, tmp_path, monkeypatch):
    chain = STANDARD + [{"op": "tfa.image.transform", "interpolation": "bilinear",
                         "transforms": [0.9, -0.1, 3.5, 0.1, 1.1, -2.5, 0.002, -0.001]}]
    runs = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("AUGBATCH_COMPILED_WARP", setting)
        compiled_warp.library.cache_clear()
        run_job(small_folder, tmp_path / setting, chain, copies=3)
        runs[setting] = shard_bytes(tmp_path / setting)
    compiled_warp.library.cache_clear()
    assert runs["1"] and runs["1"] == runs["0"]


BUILD = """
import sys
from pipeline.ops import compiled_warp
library = compiled_warp.library()
print("built" if library is not None else "none", compiled_warp._library_path())
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


def test_without_a_compiler_warps_call_opencv_and_say_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("AUGBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    compiled_warp.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="augbatch"):
            assert compiled_warp.library() is None
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
        compiled_warp.library.cache_clear()


def test_a_compiler_that_fails_is_named_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    compiler = tmp_path / "broken-g++"
    compiler.write_text("#!/bin/sh\necho 'fatal error: this compiler is broken' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("AUGBATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(compiler))
    compiled_warp.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="augbatch"):
            assert compiled_warp.library() is None
        assert "this compiler is broken" in caplog.text
        assert not list((tmp_path / "cache" / "ops").iterdir())  # nothing half-built kept
    finally:
        compiled_warp.library.cache_clear()
