"""The fast paths (batching by shape, the per-process chain, uint8 head, XLA segments, gather
resampling, device and thread choices) change nothing a user can see but speed: real photos,
real TensorFlow, real Beam pipelines."""
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli import main
from pipeline import augment, chain, config, run, transforms
from pipeline.errors import UserError
from pipeline.ops import geometry, registry
from tests.conftest import ROOT, SAMPLE_IMAGES, assert_accounted, make_job, run_job, shard_bytes

STANDARD = [
    {"op": "tf.image.random_flip_left_right"},
    {"op": "tf.image.random_brightness", "max_delta": 0.2},
    {"op": "tf.image.random_contrast", "lower": 0.7, "upper": 1.3},
    {"op": "tfa.image.rotate", "max_degrees": 20, "interpolation": "bilinear"},
]


def photos(count, height, width, offset=0):
    """`count` different real sample photos, resized to height x width, uint8."""
    paths = sorted(p for d in sorted(os.listdir(SAMPLE_IMAGES))
                   for p in [os.path.join(SAMPLE_IMAGES, d, n)
                             for n in sorted(os.listdir(os.path.join(SAMPLE_IMAGES, d)))])
    out = []
    for path in paths[offset:offset + count]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        out.append(tf.cast(tf.image.resize(image, (height, width)), tf.uint8).numpy())
    return np.stack(out)


def seeds_for(count, salt=0):
    return np.array([chain.example_seed(salt, f"key{i}", 1) for i in range(count)], np.int32)


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    """9 real photos in 3 class folders, in two sizes (a few shapes: XLA compiles each once)."""
    root = tmp_path_factory.mktemp("two_sizes") / "images"
    images = photos(9, 48, 64)
    for i, image in enumerate(images):
        if i % 3 == 2:
            image = tf.cast(tf.image.resize(image, (40, 40)), tf.uint8).numpy()
        folder = root / ["objects", "portraits", "textures"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"photo_{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return str(root)


@pytest.mark.parametrize("xla", [False, True])
def test_batch_sizes_1_3_64_give_identical_shards(two_sizes, tmp_path, xla):
    outputs = []
    for batch_size in (1, 3, 64):
        out = tmp_path / f"b{batch_size}"
        manifest = run_job(two_sizes, out, STANDARD, copies=1, seed=5, num_shards=2,
                           batch_size=batch_size, xla=xla)
        assert_accounted(manifest)
        assert manifest["counts"]["outputs"] == 18
        outputs.append(shard_bytes(out))
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(outputs[0]) == 2 and all(outputs[0].values())


def test_a_shard_sorted_in_slices_is_the_same_file(two_sizes, tmp_path, monkeypatch):
    """The shard writer sorts SORT_BYTES of records at a time (bounded memory) and writes
    about WRITE_BYTES at once: a shard sorted in many slices and written record by record is
    byte for byte the one sorted and written at once."""
    from pipeline import sinks
    whole = run_job(two_sizes, tmp_path / "whole", [], copies=2, num_shards=2)
    monkeypatch.setattr(sinks, "SORT_BYTES", 2000)  # about one record per slice
    monkeypatch.setattr(sinks, "WRITE_BYTES", 1)  # a write per record
    sliced = run_job(two_sizes, tmp_path / "sliced", [], copies=2, num_shards=2)
    assert shard_bytes(tmp_path / "whole") == shard_bytes(tmp_path / "sliced")
    assert whole["counts"] == sliced["counts"] and whole["counts"]["outputs"] == 27


def test_xla_changes_the_draws_and_the_config_hash(two_sizes, tmp_path):
    plain = make_job(two_sizes, tmp_path / "a", STANDARD)
    compiled = make_job(two_sizes, tmp_path / "b", STANDARD, xla=True)
    assert plain.config_hash != compiled.config_hash
    assert config.load(None, {"input": ("x",), "output": "y", "xla": True,
                              "plain_copies": True}).xla


# --- the chain's fast forms give the chain's pixels ----------------------------------------------

def plain_chain(steps, images, seeds):
    """The reference: chain.build on float32, converted as the runner does."""
    fn = chain.build(steps)
    return augment.to_uint8(fn(augment.to_float(images), seeds)).numpy()


def test_pixel_moving_ops_on_uint8_are_exact():
    images, seeds = photos(4, 40, 56), seeds_for(4)
    for name in [name for name, op in registry.all_ops().items() if op.uint8_exact]:
        op = registry.get(name)
        steps = chain.normalize([dict(op=name, **(op.test_params or {})),
                                 {"op": "tf.image.random_brightness", "max_delta": 0.3}])
        assert augment.plan(steps, xla=False)[0][0] == "uint8", name
        fast = tf.function(augment.build_chain(steps))(images, seeds).numpy()
        np.testing.assert_array_equal(fast, plain_chain(steps, images, seeds), err_msg=name)


def casts_to_float(fn, images, seeds):
    """Whether fn's graph converts pixels to float32 anywhere (a Cast op from uint8, or the
    native conversion)."""
    graph = tf.function(fn).get_concrete_function(tf.constant(images), tf.constant(seeds)).graph
    return any(node.type == "AugbatchToFloat" or node.type == "Cast"
               and node.get_attr("SrcT") == tf.uint8 and node.get_attr("DstT") == tf.float32
               for node in graph.get_operations())


def test_a_chain_of_uint8_stages_only_never_goes_through_float32():
    """Pixel-moving ops alone (and, with the opencv-uint8 kernel, geometric ops that only
    resample) run on the uint8 pixels from end to end: no conversion to float32 and back,
    which gives back every uint8 value and cost seven passes over the pixels. The pixels are
    those of the float32 reference."""
    images, seeds = photos(4, 40, 56), seeds_for(4)
    for name in [name for name, op in registry.all_ops().items() if op.uint8_exact]:
        steps = chain.normalize([dict(op=name, **(registry.get(name).test_params or {}))])
        fast = augment.build_chain(steps)
        assert not casts_to_float(fast, images, seeds), name
        np.testing.assert_array_equal(tf.function(fast)(images, seeds).numpy(),
                                      plain_chain(steps, images, seeds), err_msg=name)
    steps = chain.normalize([{"op": "tf.image.random_flip_left_right"},
                             {"op": "tfa.image.rotate", "max_degrees": 20}])
    uint8 = augment.build_chain(steps, kernel="opencv-uint8")
    assert not casts_to_float(uint8, images, seeds)
    with_colour = augment.build_chain(steps + chain.normalize(
        [{"op": "tf.image.random_brightness", "max_delta": 0.2}]), kernel="opencv-uint8")
    assert casts_to_float(with_colour, images, seeds)  # (what the test looks for is there)
    # The same pixels as the kernel gave through float32 and back (every uint8 value survives
    # the round trip: test_uint8_conversion_is_convert_image_dtype).
    through_float = augment.to_uint8(augment.to_float(tf.function(uint8)(images, seeds)))
    np.testing.assert_array_equal(tf.function(uint8)(images, seeds).numpy(), through_float)
    assert not np.array_equal(tf.function(uint8)(images, seeds).numpy(), images)


def test_apply_where_picks_whole_examples_in_a_batch_and_alone():
    from pipeline.ops import draw
    images = photos(4, 40, 56)
    mask = tf.constant([True, False, False, True])
    expected = np.where(mask.numpy()[:, None, None, None], images[:, :, ::-1], images)
    flip = tf.image.flip_left_right
    for fn in (lambda: draw.apply_where(mask, flip, tf.constant(images)),
               tf.function(lambda: draw.apply_where(mask, flip, tf.constant(images)))):
        np.testing.assert_array_equal(fn().numpy(), expected)
    for i in range(4):  # one example: a cond, the op runs only when chosen
        alone = tf.function(lambda x, m: draw.apply_where(m, flip, x)).get_concrete_function(
            tf.TensorSpec([1, 40, 56, 3], tf.uint8), tf.TensorSpec([1], tf.bool))
        np.testing.assert_array_equal(alone(images[i:i + 1], mask[i:i + 1]).numpy(),
                                      expected[i:i + 1])


def test_every_xla_op_compiles_and_each_image_ignores_the_batch():
    names = [name for name, op in registry.all_ops().items() if op.xla]
    steps = chain.normalize([dict(op=name, **(registry.get(name).test_params or {}))
                             for name in names] + STANDARD)
    assert [kind for kind, _, _ in augment.plan(steps, xla=True)] == ["xla"]
    images, seeds = photos(7, 32, 48), seeds_for(7, salt=3)
    run = augment.build_chain(steps, xla=True)
    fn = tf.function(lambda x, s, rows: run(x, s, rows))
    whole = fn(images, seeds, 4).numpy()  # padded to 8, two chunks of 4
    # (One compilation of the whole chain, ~20-45 s: chunks of 4 images, where an op that
    # mixed the images of a chunk would show.)
    for batch in (1, 3, 7):
        parts = [fn(images[i:i + batch], seeds[i:i + batch], 4).numpy()
                 for i in range(0, 7, batch)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert not np.array_equal(whole, plain_chain(steps, images, seeds))  # XLA draws its own
    assert 0 < whole.mean() < 255
    # Nor do the bytes depend on the chunk's size (large images go one per chunk), and for a
    # GPU the program takes a whole chunk at once: the same draws, the same images up to the
    # last bit of a pixel (shown on the standard chain: short compilations).
    short = chain.normalize(STANDARD)
    one_by_one = tf.function(lambda x, s, rows: augment.build_chain(short, xla=True)(x, s, rows))
    for_gpu = tf.function(lambda x, s, rows: augment.build_chain(
        short, xla=True, on_cpu=False)(x, s, rows))
    expected = one_by_one(images, seeds, 4).numpy()
    np.testing.assert_array_equal(one_by_one(images, seeds, 1).numpy(), expected)
    assert np.abs(for_gpu(images, seeds, 4).numpy().astype(int) - expected).max() <= 1


def test_a_mixed_chain_ignores_the_batch_too():
    """With --xla, the plain steps between compiled ones also take one image at a time."""
    steps = chain.normalize([{"op": "tf.image.random_brightness", "max_delta": 0.3},
                             {"op": "tfa.image.gaussian_filter2d", "sigma": [0.5, 1.5]},
                             {"op": "tf.image.random_contrast", "lower": 0.5, "upper": 1.5}])
    assert [kind for kind, _, _ in augment.plan(steps, xla=True)] == ["xla", "plain", "xla"]
    images, seeds = photos(5, 33, 47), seeds_for(5, salt=9)
    run = augment.build_chain(steps, xla=True)
    fn = tf.function(lambda x, s: run(x, s, 4))
    whole = fn(images, seeds).numpy()
    alone = np.concatenate([fn(images[i:i + 1], seeds[i:i + 1]).numpy() for i in range(5)])
    np.testing.assert_array_equal(alone, whole)


def test_plan_compiles_colour_and_geometry_runs_only():
    steps = chain.normalize([
        {"op": "tf.image.random_flip_left_right"},
        {"op": "tf.image.random_crop", "height": 30, "width": 30},
        {"op": "tf.image.random_brightness", "max_delta": 0.1},
        {"op": "tf.image.random_contrast", "lower": 0.8, "upper": 1.2, "probability": 0.5},
        {"op": "tfa.image.rotate", "max_degrees": 10},
        {"op": "tf.image.random_jpeg_quality", "min_jpeg_quality": 50, "max_jpeg_quality": 90},
    ])
    assert [(kind, start, len(part)) for kind, start, part in augment.plan(steps, xla=True)] == [
        ("xla", 0, 1), ("plain", 1, 1), ("xla", 2, 1), ("plain", 3, 1), ("xla", 4, 1),
        ("plain", 5, 1)]
    assert [(kind, start, len(part)) for kind, start, part in augment.plan(steps, xla=False)] == [
        ("uint8", 0, 2), ("plain", 2, 4)]
    images, seeds = photos(3, 40, 40), seeds_for(3)
    np.testing.assert_array_equal(tf.function(augment.build_chain(steps))(images, seeds),
                                  plain_chain(steps, images, seeds))
    compiled = tf.function(lambda x, s: augment.build_chain(steps, xla=True)(x, s, 2))
    assert compiled(images, seeds).shape == (3, 30, 30, 3)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("fill_mode", geometry.FILL_MODES)
def test_gather_resampling_matches_the_kernel(interpolation, fill_mode):
    images = augment.to_float(photos(3, 36, 52))
    transforms = np.array([[1, 0, 0, 0, 1, 0, 0, 0],  # identity
                           [0.9, -0.3, 14.5, 0.25, 1.1, -9.5, 0, 0],  # affine, half pixels
                           [1.1, 0.2, -20, -0.1, 0.8, 30, 0.003, -0.002]], np.float32)
    kernel = geometry.transform(images, transforms, interpolation, fill_mode, 0.3).numpy()
    gathers = tf.function(geometry.transform_with_gathers)
    xla = tf.function(geometry.transform_with_gathers, jit_compile=True)
    for fn in (gathers, xla):
        out = fn(images, transforms, interpolation, fill_mode, 0.3).numpy()
        np.testing.assert_array_equal(out[0], kernel[0])
        if interpolation == "bilinear":
            np.testing.assert_allclose(out, kernel, atol=1e-4)
        else:  # a point on a rounding boundary (the half pixels) may pick the neighbour
            assert np.mean(np.any(out != kernel, axis=-1)) < 0.01


# --- batching and sharing ----------------------------------------------------------------------

def decoded(image, key):
    item = transforms.Input(key=key, source=key, record_index=None, data=b"")
    return transforms.Decoded(item, image, "png", 3)


def test_batches_hold_one_shape_and_stay_under_the_caps():
    job = make_job("x", "y", [], copies=2, batch_size=8)
    small, large = photos(1, 20, 30)[0], np.zeros((900, 1200, 3), np.uint8)
    assert augment.inputs_per_batch(small.shape, job) == 4  # 8 images, copies included
    assert augment.inputs_per_batch(large.shape, job) == 3  # the pixel cap: 3 x 2 x 1.08 MP
    assert augment.inputs_per_batch((9000, 9000), job) == 1
    batcher = transforms.BatchByShape(job)
    batcher.start_bundle()
    emitted = []
    for i in range(11):
        emitted += list(batcher.process(decoded(large if i % 4 == 3 else small, f"k{i}")))
    emitted += [value.value for value in batcher.finish_bundle()]
    assert sorted(len(b) for b in emitted) == [1, 2, 4, 4]
    assert all(len({item.image.shape for item in b}) == 1 for b in emitted)
    assert sorted(item.input.key for b in emitted for item in b) == sorted(
        f"k{i}" for i in range(11))
    assert batcher.waiting == {} and batcher.waiting_bytes == 0


def test_waiting_images_are_capped(monkeypatch):
    monkeypatch.setattr(augment, "MAX_WAITING_BYTES", 3 * 20 * 30 * 3)
    batcher = transforms.BatchByShape(make_job("x", "y", [], copies=1, batch_size=64))
    batcher.start_bundle()
    out = []
    for i in range(9):  # nine shapes, none ever fills a batch: the cap sends them on
        out += list(batcher.process(decoded(np.zeros((20, 30 + i, 3), np.uint8), f"k{i}")))
    assert len(out) >= 6 and batcher.waiting_bytes <= 3 * 20 * 38 * 3


def test_one_chain_per_process_shared_by_the_dofn_copies(tmp_path):
    from apache_beam.internal import pickler
    dofn = transforms.AugmentAndEncode(make_job("x", str(tmp_path), STANDARD), "hash")
    copies = [pickler.loads(pickler.dumps(dofn)) for _ in range(3)]  # as Beam's threads get it
    for copy in copies:
        copy.setup()
    assert copies[0].runner is copies[1].runner is copies[2].runner
    # A later run of the same job on other paths (a warm process) reuses it: no new trace.
    again = pickler.loads(pickler.dumps(transforms.AugmentAndEncode(
        make_job("elsewhere", str(tmp_path / "other"), STANDARD), "hash")))
    again.setup()
    assert again.runner is copies[0].runner

    def runner_of(chain, **fields):
        dofn = pickler.loads(pickler.dumps(transforms.AugmentAndEncode(
            make_job("x", str(tmp_path), chain, **fields), "hash")))
        dofn.setup()
        return dofn.runner
    # Nor do another seed, batch size or number of shards need a new trace: the runner reads
    # none of them (its seeds come with each batch).
    assert runner_of(STANDARD, seed=7, batch_size=5, num_shards=3) is copies[0].runner
    # What the traced chain is made of does: the chain, its kernel, the copies, the quality.
    for changed in (runner_of([]), runner_of(STANDARD, kernel="tensorflow"),
                    runner_of(STANDARD, copies=2), runner_of(STANDARD, quality=80)):
        assert changed is not copies[0].runner
    pickle.dumps(dofn)  # still picklable once built (the runner lives outside it)


def test_batches_in_flight_all_come_out(tmp_path):
    """process() hands each batch to TensorFlow and returns (at most in_flight wait); what is
    still running when the bundle ends comes out of finish_bundle, as windowed values, error
    records on their tagged output."""
    from apache_beam.utils.windowed_value import WindowedValue
    dofn = transforms.AugmentAndEncode(make_job("x", str(tmp_path), STANDARD, copies=2), "h")
    dofn.setup()
    batches = [[decoded(photos(1, 20 + i, 30)[0], f"k{i}")] for i in range(5)]
    batches.insert(2, [decoded(np.zeros((20, 30, 1), np.uint8), "gray")])  # 1 channel of 3
    out = []
    for batch in batches:
        out += list(dofn.process(batch))
        assert len(dofn.pending) <= dofn.runner.in_flight == augment.IN_FLIGHT
    rest = list(dofn.finish_bundle())
    assert not dofn.pending
    tagged = transforms.beam.pvalue.TaggedOutput
    assert all(isinstance(o.value if isinstance(o, tagged) else o, WindowedValue) for o in rest)
    out += [tagged(o.tag, o.value.value) if isinstance(o, tagged) else o.value for o in rest]
    errors = [o.value for o in out if isinstance(o, tagged)]
    assert [(e.key, e.stage) for e in errors] == [("gray", "augment")]
    assert sorted((r.key, r.copy_index) for r in out if isinstance(r, transforms.OutputRecord)) \
        == [(f"k{i}", c) for i in range(5) for c in (0, 1, 2)]  # 0: the original
    dofn.teardown()


def test_a_chain_that_calls_python_runs_one_copy_at_a_time(two_sizes, tmp_path):
    """Python inside the graph may call TensorFlow again: several such calls at once could
    leave every TensorFlow thread waiting on another, so such a chain goes one at a time."""
    assert augment.ChainRunner(make_job("x", "y", STANDARD)).in_flight == augment.IN_FLIGHT
    blur = [{"op": "python", "function": "tests.user_ops:blur_with_tensorflow"}] + STANDARD
    job = config.load(None, overrides={"input": (two_sizes,), "output": str(tmp_path / "out"),
                                       "chain": blur, "copies": 3, "batch_size": 2},
                      allow_python_ops=True)
    assert augment.ChainRunner(job).in_flight == 1
    manifest = run.run_expand(job)
    assert_accounted(manifest)
    assert (manifest["counts"]["outputs"], manifest["counts"]["errored"]) == (36, 0)


# --- devices and threads -----------------------------------------------------------------------

def test_device_choice():
    gpus = ["/physical_device:GPU:0", "/physical_device:GPU:1"]
    assert augment.choose_device("auto", []) == "/device:CPU:0"
    assert augment.choose_device("auto", gpus) == "/device:GPU:0"
    assert augment.choose_device("cpu", gpus) == "/device:CPU:0"
    assert augment.choose_device("gpu", gpus) == "/device:GPU:0"
    with pytest.raises(UserError, match="--device gpu: TensorFlow sees no GPU"):
        augment.choose_device("gpu", [])


def test_device_gpu_without_gpu_is_a_user_error_before_any_output(small_folder, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["expand", "-i", small_folder, "-o", str(out),
                                       "--device", "gpu", "--plain-copies"])
    assert result.exit_code == 2
    assert "--device gpu: TensorFlow sees no GPU" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_workers_threads_and_remote_device_checks():
    from pipeline.run import beam_options
    job = make_job("x", "y", [], device="gpu")
    assert augment.for_workers(job, beam_options(["--runner=DataflowRunner"])) is job
    job = make_job("x", "y", [])
    mp = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert augment.for_workers(job, beam_options(mp)).tf_threads == max(
        1, os.cpu_count() // 2)
    assert augment.for_workers(make_job("x", "y", [], tf_threads=3), beam_options(mp)) \
        .tf_threads == 3
    assert augment.for_workers(job, beam_options([])).tf_threads == 0


def test_chain_runs_on_the_device_it_is_given():
    """In a fresh process (devices are fixed once TensorFlow starts): the CPU split into two
    logical devices, the chain placed on the second; same bytes as on the first."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {ROOT!r})
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        split = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, split)
        from pipeline import augment, config, chain
        job = config.Job(input=("x",), output="y", copies=2, xla=True,
                         chain=tuple(chain.normalize({STANDARD[1:3]!r})))
        images = np.random.default_rng(0).integers(0, 255, (2, 24, 32, 3), dtype=np.uint8)
        seeds = np.arange(8, dtype=np.int32).reshape(4, 2)
        out = {{}}
        for device in ("/device:CPU:0", "/device:CPU:1"):
            runner = augment.ChainRunner(job, device=device)
            ops = runner._augment_encode.graph.get_operations()
            print(device, sorted({{op.device for op in ops if op.device}}))
            out[device] = runner.augment_encode(images, seeds, ["png"] * 4)
        assert out["/device:CPU:0"] == out["/device:CPU:1"]
        print("same bytes")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].split(" ", 1)[1] == "['/device:CPU:0']"
    assert lines[1].split(" ", 1)[1] == "['/device:CPU:0', '/device:CPU:1']"  # encode: CPU:0
    assert lines[-1] == "same bytes"


def test_xla_bytes_do_not_depend_on_the_number_of_tensorflow_threads(tmp_path):
    """XLA splits its loops by TensorFlow's op threads, which could round a pixel's last bit
    otherwise: every op runs on one thread, --tf-threads only says how many run at once.
    (Fresh processes: the threads are set when TensorFlow starts.)"""
    folder = tmp_path / "images" / "photos"
    folder.mkdir(parents=True)
    for i, image in enumerate(photos(2, 512, 512)):  # (small images: no loop is split)
        (folder / f"photo_{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    (tmp_path / "chain.yaml").write_text(json.dumps({"augment": {"chain": STANDARD}}))
    outputs = []
    for threads in (1, 3):
        out = tmp_path / f"out-{threads}"
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, "cli.py"), "--quiet", "expand",
             "-c", str(tmp_path / "chain.yaml"), "-i", str(tmp_path / "images"), "-o", str(out),
             "--xla", "--format", "png", "--copies", "4", "--tf-threads", str(threads)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(shard_bytes(out))
    assert outputs[0] and outputs[0] == outputs[1]


def test_uint8_conversion_is_convert_image_dtype():
    values = np.concatenate([np.arange(256) / 255.0, np.linspace(-2, 3, 100001),
                             np.nextafter(np.arange(256) / 255.0, 2)]).astype(np.float32)
    images = tf.reshape(tf.constant(values), [1, 1, -1, 1])
    reference = tf.image.convert_image_dtype(tf.clip_by_value(images, 0.0, 1.0), tf.uint8,
                                             saturate=True)
    np.testing.assert_array_equal(augment.to_uint8(images), reference)
    every = tf.constant(np.arange(256, dtype=np.uint8).reshape(1, 1, -1, 1))
    np.testing.assert_array_equal(augment.to_uint8(augment.to_float(every)), every)


# --- plain RGB JPEGs decoded in the augment call -----------------------------------------------

def jpeg_bytes(image, **save):
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def png_bytes(image, mode=None, **save):
    import io
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode or Image.fromarray(image).mode).save(buffer, "PNG",
                                                                            **save)
    return buffer.getvalue()


def inputs_of_every_kind():
    """(key, encoded bytes, decoded in the graph?): RGB JPEGs of two sizes and RGB PNGs (16-bit,
    interlaced, with a transparent colour), and what DecodeImage still decodes itself: a gray
    JPEG, a JPEG with an EXIF orientation to apply, RGBA, palette and gray PNGs."""
    from PIL import Image
    small, large = photos(3, 40, 56), photos(2, 64, 48, offset=3)
    turned = Image.Exif()
    turned[transforms.EXIF_ORIENTATION] = 6
    deep = tf.io.encode_png(tf.constant(small[1].astype(np.uint16) * 257 + 99)).numpy()
    return ([(f"rgb{i}", jpeg_bytes(image), True) for i, image in enumerate(small)]
            + [(f"rgb_large{i}", jpeg_bytes(image), True) for i, image in enumerate(large)]
            + [("png", png_bytes(small[1]), True), ("png16", deep, True),
               ("png_interlaced", png_bytes(small[2], interlace=1), True),
               ("png_transparent_colour", png_bytes(
                   small[0], transparency=tuple(int(v) for v in small[0][0, 0])), True),
               ("gray", jpeg_bytes(small[0][..., 0]), False),
               ("turned", jpeg_bytes(small[2], exif=turned.tobytes()), False),
               ("rgba", png_bytes(small[1], "RGBA"), False),
               ("palette", png_bytes(small[2], "P"), False),
               ("gray_png", png_bytes(small[0], "L"), False)])


def test_plain_rgb_images_are_decoded_in_the_augment_call_to_the_same_records(tmp_path):
    """DecodeImage(in_graph=True) leaves a plain RGB JPEG or PNG to the augment call (its size
    from the header); there TensorFlow's decoder gives the pixels DecodeImage gives: every
    record is the same bytes, batched together or alone, copies and originals."""
    def decode(in_graph):
        dofn = transforms.DecodeImage(3, 10 ** 6, True, in_graph=in_graph)
        dofn.setup()
        out = []
        for key, data, _ in inputs_of_every_kind():
            item = transforms.Input(key=key, source=key, record_index=None, data=data)
            out += [o for o in dofn.process(item) if isinstance(o, transforms.Decoded)]
        return out
    deferred, decoded_here = decode(True), decode(False)
    for item, (key, _, in_graph), eager in zip(deferred, inputs_of_every_kind(), decoded_here):
        assert item.input.key == key and (item.image is None) == in_graph
        assert item.shape == eager.shape == eager.image.shape
    job = make_job("x", str(tmp_path), STANDARD, copies=2)  # (originals kept: copy 0)
    dofn = transforms.AugmentAndEncode(job, "hash")
    dofn.setup()

    def records(batches):
        out = [o for batch in batches for o in dofn.process_now(batch)]
        assert all(isinstance(o, transforms.OutputRecord) for o in out)
        return sorted((o.key, o.copy_index, o.payload) for o in out)
    expected = records([[item] for item in decoded_here])
    assert records([[item] for item in deferred]) == expected
    assert records([deferred]) == expected  # all at once: a batch per shape and kind
    dofn.teardown()


def test_a_jpeg_that_fails_to_decode_in_the_augment_call_is_a_decode_error_alone(tmp_path):
    """A JPEG whose header is fine but whose data is cut short fails its batch in the graph;
    its batch goes again input by input: it becomes the error DecodeImage would have made,
    every other input of the batch is written."""
    folder = tmp_path / "images" / "objects"
    folder.mkdir(parents=True)
    for i, image in enumerate(photos(4, 120, 160)):
        data = jpeg_bytes(image)
        (folder / f"photo_{i}.jpg").write_bytes(data[:len(data) * 3 // 4] if i == 2 else data)
    assert transforms.header((folder / "photo_2.jpg").read_bytes()).mode == "RGB"
    manifest = run_job(str(tmp_path / "images"), tmp_path / "out", STANDARD, copies=2)
    assert_accounted(manifest)
    assert manifest["counts"]["written"] == 3 and manifest["counts"]["errored"] == 1
    errors = [json.loads(line) for line in open(tmp_path / "out" / "errors.jsonl")]
    assert [(e["source"].endswith("photo_2.jpg"), e["stage"], e["reason"])
            for e in errors] == [(True, "decode", "corrupt or truncated JPEG")]
    assert "image file is truncated" in errors[0]["message"]
    assert len(shard_bytes(tmp_path / "out")) >= 1


# --- the inputs' list ----------------------------------------------------------------------------

def synthetic_refs(count):
    from pipeline import sources
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")  # a name that is not UTF-8
    return [sources.InputRef(f"objects/{odd if i == 7 else 'photo'}_{i}.jpg",
                             f"/data/objects/photo_{i}.jpg", None if i % 3 else i % 5)
            for i in range(count)]


def test_the_input_list_gives_back_every_input_in_ranges(tmp_path):
    from pipeline import sources
    refs = synthetic_refs(2500)
    spans = sources.write_input_list(str(tmp_path), refs)
    assert len(spans) == 3 and spans[0][1] == 0 and spans[-1][2] == os.path.getsize(
        tmp_path / sources.INPUT_LIST)
    read = {i: list(sources.read_input_list(span)) for i, span in enumerate(spans)}
    assert [len(read[i]) for i in range(3)] == [1000, 1000, 500]
    assert [ref for i in (2, 0, 1) for ref in read[i]] == refs[2000:] + refs[:2000]
    assert sources.write_input_list(str(tmp_path), []) == []


def test_labelled_images_and_their_annotations_come_back_from_the_list_as_they_were(
        tmp_path):
    """A labelled dataset's refs carry annotations of every format's making: tuples, dicts
    with number keys, nested lists, floats, None, names that are not UTF-8. The list gives
    each back equal and of the same types; a value that is not plain data is refused (the
    run then keeps its inputs inside the pipeline)."""
    from pipeline import formats, sources
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")
    annotations = [
        {"file": "/d/instances.json", "id": 7, "size": (480, 640), "masks": True,
         "keypoints": 0, "objects": [
             {"id": 1, "bbox": [10.5, 20.25, 30.0, 40.0], "label": 3, "name": "cat",
              "crowd": 0, "area": 1200.5, "segmentation": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]],
              "keypoints": None},
             {"id": 2, "bbox": [0, 0, 1, 1], "label": 1, "name": odd, "crowd": 1,
              "area": None, "segmentation": {"counts": "abc", "size": [480, 640]},
              "keypoints": [1, 2, 2]}]},
        {"labels": "/d/labels/a.txt", "present": False, "mode": "boxes", "kpt_shape": (17, 3),
         "names": {0: "person", 1: "bicycle", 10: odd}},
        "/d/masks/a.png",
        {"file": None, "size": (0, 0), "objects": [], "weights": float("inf")},
        None]
    refs = [formats.Ref(f"train/{odd}_{i}.jpg", f"/d/images/{i}.jpg", label=i % 2 or None,
                        label_text=None if i % 3 else "cat",
                        annotation=annotations[i % len(annotations)],
                        split=("train", "val", None)[i % 3]) for i in range(1203)]
    spans = sources.write_input_list(str(tmp_path), refs)
    back = [ref for span in spans for ref in sources.read_input_list(span)]
    assert back == refs and [type(r) for r in back] == [formats.Ref] * len(refs)

    def types(value):  # the types all the way down, keys included
        if isinstance(value, dict):
            return {"dict": sorted((repr(types(k)), repr(types(v))) for k, v in value.items())}
        if isinstance(value, (list, tuple)):
            return [type(value).__name__] + [types(v) for v in value]
        return type(value).__name__
    assert [types(r.annotation) for r in back] == [types(r.annotation) for r in refs]
    for value, name in [(np.zeros(3), "ndarray"), (np.float32(0.5), "float32"),
                        ({1, 2}, "set")]:
        with pytest.raises(TypeError, match=name):
            sources.write_input_list(str(tmp_path), [formats.Ref("a", "/a", annotation={
                "value": value})])
    with pytest.raises(TypeError, match="several kinds"):
        sources.write_input_list(str(tmp_path), [refs[0], sources.InputRef("b", "/b")])


def test_a_coco_dataset_hands_its_images_and_annotations_over_in_a_file(tmp_path):
    """COCO images with their boxes and polygons: the pipeline holds the ranges of the list
    (Beam pickled 20,000 COCO images' annotations for ~7 s before the first read), and the
    run writes every image with its objects."""
    import json
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipeline import config, runners, sources
    from PIL import Image
    root = tmp_path / "coco"
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    photo = photos(1, 48, 64)[0]
    images, objects = [], []
    for i in range(30):
        Image.fromarray(photo).save(root / "train2017" / f"{i:04d}.jpg", quality=90)
        images.append({"id": i, "file_name": f"{i:04d}.jpg", "height": 48, "width": 64})
        objects += [{"id": 10 * i + k, "image_id": i, "category_id": 1 + k, "iscrowd": 0,
                     "bbox": [4.0 + k, 6.0, 20.0, 16.0], "area": 320.0,
                     "segmentation": [[4.0 + k, 6.0, 24.0 + k, 6.0, 24.0 + k, 22.0, 4.0 + k,
                                       22.0]]} for k in range(i % 3)]
    annotations = root / "annotations" / "instances_train2017.json"
    annotations.write_text(json.dumps({"images": images, "annotations": objects, "categories": [
        {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    job = config.load(None, overrides={
        "input": (str(annotations),), "output": str(tmp_path / "out"), "copies": 2,
        "chain": [{"op": "tf.image.random_flip_left_right"}], "keep_original": False})
    discovery = sources.discover(job)
    assert len(discovery.refs) == 30 and discovery.refs[1].annotation["objects"]

    def proto_bytes(refs):
        many = sources.Discovery(discovery.kind, refs, discovery.label_map, [], [])
        with runners.new_pipeline(PipelineOptions(["--runner=DirectRunner"])) as p:
            run.build_pipeline(p, job, many, 1, str(tmp_path / f"tmp-{len(refs)}"),
                               job.config_hash, listed=True)
            return len(p.to_runner_api().SerializeToString())
    more = [dataclasses.replace(ref, key=f"{i}/{ref.key}")
            for i in range(100) for ref in discovery.refs]
    assert proto_bytes(more) < 1.1 * proto_bytes(discovery.refs[:3])
    manifest = run.run_expand(job)
    assert manifest["counts"]["written"] == 30 and manifest["counts"]["outputs"] == 60
    assert manifest["targets"]["objects_kept"] == 2 * sum(i % 3 for i in range(30))
    assert manifest["targets"]["objects_dropped"] == 0


def test_a_run_hands_its_inputs_over_in_a_file_not_inside_the_pipeline(tmp_path):
    """Beam pickles and compresses what a Create holds (seconds for tens of thousands of
    inputs); a run's pipeline holds the ranges of its inputs' list, as small for 20 inputs
    as for 20,000."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from pipeline import runners, sources

    def proto_bytes(count, listed):
        job = make_job(str(tmp_path), tmp_path / "out", STANDARD)
        discovery = sources.Discovery("folder", synthetic_refs(count), {"objects": 0}, [], [])
        with runners.new_pipeline(PipelineOptions(["--runner=DirectRunner"])) as p:
            run.build_pipeline(p, job, discovery, 1, str(tmp_path / f"tmp-{count}-{listed}"),
                               job.config_hash, listed=listed)
            return len(p.to_runner_api().SerializeToString())
    assert proto_bytes(20_000, True) < 1.1 * proto_bytes(20, True)
    assert proto_bytes(20_000, False) > 2 * proto_bytes(20, False)
    assert len(list(sources.read_input_list(
        (str(tmp_path / "tmp-20000-True" / sources.INPUT_LIST), 0, 10 ** 9,
         sources.InputRef)))) == 20_000
