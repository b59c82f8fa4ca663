"""What was done to each copy (augment/ops), `inspect --record`, `preview --explain` and
`augbatch replay`: real TensorFlow, real Beam runs on a few small sample photos."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import cli
from pipeline import augment, chain, config, preview, replay
from pipeline.example import OPS_KEY
from pipeline.ops import geometry
from tests.conftest import (SAMPLE_IMAGES, ROOT, decode_file, make_job, run_job, shard_bytes)

# A geometric op, a probability and a one_of: what a record must say, and replay redo.
CHAIN = [
    {"op": "tf.image.random_flip_left_right"},
    {"op": "tfa.image.rotate", "max_degrees": 25, "interpolation": "bilinear"},
    {"op": "tf.image.random_brightness", "max_delta": 0.3, "probability": 0.5},
    {"one_of": [{"op": "tf.image.flip_up_down"},
                {"op": "tf.image.adjust_brightness", "delta": 0.3},
                {"op": "tf.image.rgb_to_grayscale"}]},
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three small sample photos in class folders."""
    root = tmp_path_factory.mktemp("photos")
    for name in ("objects/coffee_01.jpg", "objects/clock_motion_01.jpg",
                 "portraits/camera_01.jpg"):
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        shutil.copy(os.path.join(SAMPLE_IMAGES, name), root / name)
    return str(root)


@pytest.fixture(scope="module")
def run(photos, tmp_path_factory):
    """One expand run of CHAIN, 4 copies of each photo; and its records by (key, copy)."""
    out = tmp_path_factory.mktemp("out")
    run_job(photos, out, CHAIN, copies=4, seed=3, format="png")
    return str(out), records(out)


def records(output_dir):
    """Every record of a run, as tf.train.Example, by (key, copy index)."""
    out = {}
    for name in shard_bytes(output_dir):
        for record in tf.data.TFRecordDataset(os.path.join(output_dir, name)):
            example = tf.train.Example.FromString(record.numpy())
            out[replay.record_key(example.features.feature),
                example.features.feature["augment/copy_index"].int64_list.value[0]] = example
    return out


def ops_of(example):
    return json.loads(example.features.feature[OPS_KEY].bytes_list.value[0])


def pixels(example):
    data = example.features.feature["image/encoded"].bytes_list.value[0]
    return tf.io.decode_image(data, expand_animations=False).numpy()


def invoke(*args):
    return CliRunner().invoke(cli.main, [*map(str, args)])


# --- the record ------------------------------------------------------------------------------

def test_every_record_says_what_each_op_did(run):
    _, found = run
    paths = [(path, name) for path, name in chain.op_paths(chain.normalize(CHAIN))]
    skipped = picked = 0
    for (key, copy), example in found.items():
        ops = ops_of(example)
        assert len(ops["input_sha256"]) == 16
        if copy == 0:
            assert ops["ops"] == []  # the original: nothing done
            continue
        entries = ops["ops"]
        assert [(e["at"], e["op"]) for e in entries] == paths
        assert entries[1]["ran"] and isinstance(entries[1]["angle"], float)
        assert abs(entries[1]["angle"]) <= 25 and entries[1]["scale"] == [1.0, 1.0]
        brightness = entries[2]
        if brightness["ran"]:
            assert -0.3 <= brightness["drew"][0] <= 0.3
        else:
            assert brightness["by"] == "augment.chain[2].probability"
            assert "drew" not in brightness
            skipped += 1
        branches = entries[3:]
        assert sum(e["ran"] for e in branches) == 1  # one_of: exactly one branch
        assert all(e["by"] == "augment.chain[3].one_of" for e in branches if not e["ran"])
        picked += 1
    assert skipped and skipped < picked  # the coin went both ways


def test_images_are_unchanged_and_opting_out_restores_the_records(photos, run, tmp_path):
    """With output.record_ops false the records are byte for byte those without the feature
    (as before it existed); with it, they differ by that feature only."""
    out, with_ops = run
    run_job(photos, tmp_path / "off", CHAIN, copies=4, seed=3, format="png", record_ops=False)
    without = records(tmp_path / "off")
    assert set(without) == set(with_ops)
    for name, data in shard_bytes(tmp_path / "off").items():
        for record in tf.data.TFRecordDataset(str(tmp_path / "off" / name)):
            example = tf.train.Example.FromString(record.numpy())
            assert OPS_KEY not in example.features.feature
            key = example.features.feature["image/source_id"].bytes_list.value[0].decode()
            copy = example.features.feature["augment/copy_index"].int64_list.value[0]
            stripped = tf.train.Example()
            stripped.CopyFrom(with_ops[key, copy])
            del stripped.features.feature[OPS_KEY]
            assert (stripped.SerializeToString(deterministic=True)
                    == record.numpy())  # same image bytes, same everything else
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert OPS_KEY in manifest["features"]["written"]
    assert manifest["config"]["record_ops"] is True
    assert make_job(photos, out, CHAIN, copies=4, seed=3, format="png",
                    record_ops=False).config_hash == manifest["config_hash"]  # not hashed


def test_plain_copies_record_no_op(photos, tmp_path):
    run_job(photos, tmp_path / "plain", [], copies=1, plain_copies=True)
    found = records(tmp_path / "plain")
    assert len(found) == 6 and all(ops_of(e)["ops"] == [] for e in found.values())


def test_record_ops_is_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output: {record_ops: maybe}\naugment: {chain: [tf.image.flip_left_right]}\n")
    with pytest.raises(config.ConfigError, match="output.record_ops"):
        config.load(str(path), require_paths=False)


# --- the recorded values are the ones that made the pixels ------------------------------------

def _one_copy(photos, tmp_path, steps, copies=3, **fields):
    out = tmp_path / "one"
    run_job(photos, out, steps, copies=copies, seed=5, format="png", kernel="tensorflow",
            **fields)
    return records(out)


def _input(photos, key):
    return decode_file(os.path.join(photos, key))


def test_recorded_angle_is_the_rotation_of_the_pixels(photos, tmp_path):
    steps = [{"op": "tfa.image.rotate", "max_degrees": 30}]
    found = _one_copy(photos, tmp_path, steps)
    key = "objects/coffee_01.jpg"
    image = tf.image.convert_image_dtype(_input(photos, key)[None], tf.float32)
    height, width = image.shape[1:3]
    for copy in (1, 2, 3):
        entry = ops_of(found[key, copy])["ops"][0]
        # The geometry the chain draws for this copy is a rotation by the recorded angle.
        seed = np.array([chain.example_seed(5, key, copy)], np.int32)
        moves = augment.build_geometry(chain.normalize(steps))(seed, height, width)
        from pipeline.ops import tfa_image
        expected = tfa_image.impl.angles_to_projective_transforms(
            [math.radians(entry["angle"])], float(height), float(width))
        np.testing.assert_allclose(moves[0][0], expected, rtol=1e-3, atol=1e-3)
        # ... and resampling the input by that angle gives the stored pixels (the angle is
        # rounded to 0.01 degrees: a few nearest-neighbour picks may move by one pixel).
        def rotated(degrees):
            t = tfa_image.impl.angles_to_projective_transforms(
                [math.radians(degrees)], float(height), float(width))
            return augment.to_uint8(geometry.transform(image, t)).numpy()[0]
        stored = pixels(found[key, copy]).astype(int)
        close = np.mean(np.abs(rotated(entry["angle"]) - stored))
        assert close < 1.0
        assert np.mean(np.abs(rotated(entry["angle"] + 5) - stored)) > 5 * close + 1


@pytest.mark.parametrize("xla", [False, True])
def test_recorded_brightness_delta_is_the_one_applied(photos, tmp_path, xla):
    """(XLA draws other numbers: its record is compiled as its pixels are.)"""
    found = _one_copy(photos, tmp_path, [{"op": "tf.image.random_brightness",
                                          "max_delta": 0.3}], xla=xla)
    key = "portraits/camera_01.jpg"
    image = tf.image.convert_image_dtype(_input(photos, key), tf.float32)
    deltas = set()
    for copy in (1, 2, 3):
        delta = ops_of(found[key, copy])["ops"][0]["drew"][0]
        deltas.add(delta)
        expected = augment.to_uint8(image + delta).numpy().astype(int)
        assert np.max(np.abs(expected - pixels(found[key, copy]))) <= 1
    assert len(deltas) == 3


def test_recorded_one_of_branch_is_the_one_that_made_the_pixels(photos, tmp_path):
    """Each copy's recorded branch, run alone on the input, gives the stored pixels."""
    steps = [CHAIN[3]]
    found = _one_copy(photos, tmp_path, steps, copies=6)
    key = "objects/clock_motion_01.jpg"
    image = tf.image.convert_image_dtype(_input(photos, key)[None], tf.float32)
    branches = set()
    for copy in range(1, 7):
        ran = [e for e in ops_of(found[key, copy])["ops"] if e["ran"]]
        assert len(ran) == 1
        index = int(ran[0]["at"].rsplit("[", 1)[1].rstrip("]"))
        branches.add(index)
        forced = chain.build(chain.normalize([CHAIN[3]["one_of"][index]]))
        alone = augment.to_uint8(forced(image, tf.zeros([1, 2], tf.int32))).numpy()[0]
        assert np.max(np.abs(alone.astype(int) - pixels(found[key, copy]))) <= 1
    assert len(branches) >= 2


def test_every_op_can_be_recorded():
    """Registry-driven: each op of this stack traces in record mode and says something (a
    failure here would fail every input of a run using that op)."""
    from pipeline.ops import registry
    ops = {name: op for name, op in registry.all_ops().items()
           if op.test_params is not None and op.family != "python"}
    steps = chain.normalize([{"op": name, **op.test_params} for name, op in ops.items()])
    record = augment.build_record(steps)
    notes = tf.function(record, autograph=False)(
        tf.constant([[1, 2], [3, 4]]), tf.constant(48), tf.constant(64))
    entries = chain.op_records(record.steps(), tf.nest.map_structure(np.asarray, notes), 2)
    assert [e["op"] for e in entries[0]] == list(ops)
    for entry in entries[0] + entries[1]:
        assert entry["ran"]
        if ops[entry["op"]].random:  # what it drew, its move, or (TF's own draws) its seed
            assert {"drew", "seed", "box", "shift", "angle", "flip", "identity",
                    "matrix"} & set(entry)


def _loops(concrete):
    """The while loops of a traced function, its called functions' included."""
    graph = concrete.graph.as_graph_def()
    return sum(node.op in ("While", "StatelessWhile") for node in list(graph.node) + [
        node for f in graph.library.function for node in f.node_def])


def test_the_notes_made_in_the_chains_loop_are_those_of_a_loop_of_their_own():
    """On the CPU each copy's notes are made in the chain's own loop over the copies (no loop
    of their own: a runner recording its ops has no more loops than one that does not); they
    are what the record's own loop (the GPU's and XLA's way) notes."""
    from tests.test_performance_paths import photos as some_photos, seeds_for
    images, seeds = some_photos(2, 40, 48), seeds_for(6)
    runner = augment.ChainRunner(make_job("x", "y", CHAIN, copies=3))
    plain = augment.ChainRunner(make_job("x", "y", CHAIN, copies=3, record_ops=False))
    assert _loops(runner._augment_encode) == _loops(plain._augment_encode)
    _, _, found = runner.augment_encode(images, seeds, ["png"] * 6)
    record = augment.build_record(chain.normalize(CHAIN))
    notes = tf.function(record, autograph=False)(tf.constant(seeds), tf.constant(40),
                                                 tf.constant(48))
    assert found == chain.op_records(record.steps(), tf.nest.map_structure(np.asarray, notes), 6)
    assert {e["ran"] for ops in found for e in ops} == {True, False}  # the coin and the pick


def test_describe_move_reads_crops_flips_and_rotations():
    assert chain.describe_move([1, 0, 0, 0, 1, 0, 0, 0], 10, 20, 10, 20) == {}
    assert chain.describe_move([-1, 0, 19, 0, 1, 0, 0, 0], 10, 20, 10, 20) == {"flip": "x"}
    # a 10x5 window at (4, 2), resized to 20x10: each output pixel is half an input pixel
    crop = chain.describe_move([0.5, 0, 3.75, 0, 0.5, 1.75, 0, 0], 10, 20, 10, 20)
    assert crop == {"box": [4.0, 2.0, 14.0, 7.0]}
    # the content moved 3 pixels left and 2 down; then the same, mirrored first
    assert chain.describe_move([1, 0, 3, 0, 1, -2, 0, 0], 10, 20, 10, 20) == {
        "shift": [-3.0, 2.0]}
    assert chain.describe_move([-1, 0, 16, 0, 1, -2, 0, 0], 10, 20, 10, 20) == {
        "flip": "x", "shift": [-3.0, 2.0]}
    c, s = math.cos(0.3), math.sin(0.3)
    turned = chain.describe_move([c, -s, 0, s, c, 0, 0, 0], 10, 10, 10, 10)
    assert turned["angle"] == round(math.degrees(0.3), 2) and turned["scale"] == [1.0, 1.0]
    assert "matrix" in chain.describe_move([1, 0, 0, 0, 1, 0, 0.01, 0], 10, 10, 10, 10)
    # no move: each number within 1e-6 of the identity's, and the size kept
    assert chain.describe_move([1 + 5e-7, 0, 4e-7, 0, 1, -9e-7, 0, 0], 10, 20, 10, 20) == {}
    for index in range(8):
        near = [1, 0, 0, 0, 1, 0, 0, 0]
        near[index] += 2e-6
        assert not chain._is_identity(near), index
    # as max(|t - identity|) < 1e-6 was: a NaN is passed over after the first number only
    nan = float("nan")
    assert chain._is_identity([1, nan, 0, 0, 1, 0, 0, 0])
    assert not chain._is_identity([nan, 0, 0, 0, 1, 0, 0, 0])
    assert chain.describe_move([1, 0, 0, 0, 1, 0, 0, 0], 10, 20, 5, 20) != {}


def test_notes_leave_the_graph_flat_and_come_back_as_tf_nest_nests_them():
    notes = [{"seeds": tf.constant([1]), "move": (), "draws": [tf.constant([2.0])],
              "conditions": [tf.constant([True]), tf.constant([False])]},
             {"move": (tf.constant([3.0]), tf.constant([4])), "draws": [], "seeds": tf.constant(5),
              "conditions": []}]
    layout = tf.nest.map_structure(lambda _: None, notes)
    back = augment._nested_like(layout, iter(tf.nest.flatten(notes)))
    tf.nest.assert_same_structure(back, notes)
    assert all(a is b for a, b in zip(tf.nest.flatten(back), tf.nest.flatten(notes)))


# --- inspect --record and preview --explain ----------------------------------------------------

def test_inspect_record_prints_lineage_and_one_line_per_op(run):
    out, found = run
    key = "objects/coffee_01.jpg"
    copy = next(c for (k, c), e in sorted(found.items())
                if k == key and c and not ops_of(e)["ops"][2]["ran"])
    result = invoke("inspect", out, "--record", f"{key}:{copy}")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{key} copy {copy}: ")
    assert "seed 3, config hash" in result.output
    op_lines = [line for line in lines if "augment.chain[" in line]
    assert len(op_lines) == 6
    assert "tfa.image.rotate: angle" in op_lines[1]
    assert "skipped (augment.chain[2].probability)" in op_lines[2]
    original = invoke("inspect", out, "--record", f"{key}:0")
    assert "ops: none (the original, untouched)" in original.output
    for bad, says in (("nokey", "is not KEY:COPY"), (f"{key}:9", "has no copy 9"),
                      ("nope.jpg:1", "no record of key nope.jpg")):
        result = invoke("inspect", out, "--record", bad)
        assert result.exit_code == 2 and says in result.output, result.output
        assert "Traceback" not in result.output


def test_preview_explain_captions_each_copy(photos, tmp_path):
    job = make_job(photos, "-", CHAIN, copies=3, seed=3, record_ops=False)
    rows = preview.write(job, str(tmp_path / "sheet.png"), n=1, explain=True)
    tiles = preview.tiles_of(rows[0], explain=True)
    assert len(tiles) == 4 and len(tiles[0].caption) == 2  # the original: no ops
    for tile, ops in zip(tiles[1:], rows[0].ops):
        assert tile.caption[2:] == replay.caption(ops)
        assert "rotate " in tile.caption[2] and "°" in tile.caption[2]
    assert os.path.getsize(tmp_path / "sheet.png") > 0
    result = invoke("preview", "-i", photos, "-o", tmp_path / "cli.png", "-n", 1,
                    "--copies", 2, "--explain", "-c", _config(tmp_path))
    assert result.exit_code == 0, result.output


def _config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"augment": {"chain": CHAIN, "seed": 3}}))
    return path


# --- replay ------------------------------------------------------------------------------------

def test_replay_makes_a_copy_again_byte_for_byte(run, tmp_path):
    """A copy whose brightness ran and one whose brightness was skipped by its coin."""
    out, found = run
    key = "portraits/camera_01.jpg"
    ran = {ops_of(found[key, c])["ops"][2]["ran"]: c for c in range(1, 5)}
    assert set(ran) == {True, False}
    for copy in ran.values():
        result = invoke("replay", out, f"{key}:{copy}", "-o", tmp_path / f"{copy}.png")
        assert result.exit_code == 0, result.output
        assert "identical" in result.output and "byte for byte" in result.output
        assert "tfa.image.rotate: angle" in result.output
        np.testing.assert_array_equal(decode_file(str(tmp_path / f"{copy}.png")),
                                      pixels(found[key, copy]))
    assert replay.replay(out, key, 0).same_record  # the original too


def test_replay_with_boxes_gives_the_same_record(tmp_path):
    """Detection records: the copy's boxes are made again too (the whole record is equal)."""
    out = tmp_path / "out"
    steps = [{"op": "tf.image.random_flip_left_right"},
             {"op": "tfa.image.rotate", "max_degrees": 12, "interpolation": "bilinear"},
             {"op": "tf.image.random_crop_and_resize", "scale": [0.7, 1.0]},
             {"op": "tf.image.random_contrast", "lower": 0.8, "upper": 1.2,
              "probability": 0.5}]
    run_job(os.path.join(ROOT, "sample_data", "detection", "objects.tfrecord"), out, steps,
            copies=2, seed=2024)
    found = records(out)
    key = sorted(k for k, _ in found)[0]
    entries = ops_of(found[key, 2])["ops"]
    assert "box" in entries[2] and "angle" in entries[1]
    replayed = replay.replay(str(out), key, 2)
    assert replayed.same_record and replayed.same_image
    assert found[key, 2].features.feature["image/object/bbox/xmin"].float_list.value


def test_replay_refuses_what_it_cannot_redo(photos, tmp_path):
    work = tmp_path / "photos"
    shutil.copytree(photos, work)
    out = tmp_path / "out"
    run_job(str(work), out, CHAIN, copies=1, seed=3)
    key = "objects/coffee_01.jpg"

    def refused(*args, says):
        result = invoke("replay", *args)
        assert result.exit_code == 2, result.output
        assert says in result.output and "Traceback" not in result.output, result.output

    refused(out, f"{key}:3", says="has no copy 3")
    refused(out, "objects/none.jpg:1", says="no record of key objects/none.jpg")
    refused(tmp_path, f"{key}:1", says="no manifest.json of an augbatch run")
    # the input changed since the run, then is gone
    shutil.copy(work / "objects" / "clock_motion_01.jpg", work / "objects" / "coffee_01.jpg")
    refused(out, f"{key}:1", says="has changed since the run")
    os.remove(work / "objects" / "coffee_01.jpg")
    refused(out, f"{key}:1", says="is gone")
    # another config: the manifest's hash is not the records'
    manifest_path = out / "manifest.json"
    manifest = json.load(open(manifest_path))
    manifest["config"]["seed"] = 4
    json.dump(manifest, open(manifest_path, "w"))
    refused(out, "portraits/camera_01.jpg:1", says="hashes to")
    manifest["config_hash"] = make_job(str(work), out, CHAIN, copies=1, seed=4).config_hash
    json.dump(manifest, open(manifest_path, "w"))
    refused(out, "portraits/camera_01.jpg:1", says="not this run's record")


def test_replay_of_inputs_that_moved_says_so_and_reads_them_from_input(photos, tmp_path):
    work = tmp_path / "photos"
    shutil.copytree(photos, work)
    out = tmp_path / "out"
    run_job(str(work), out, CHAIN, copies=1, seed=3)
    moved = tmp_path / "moved"
    os.rename(work, moved)
    result = invoke("replay", out, "objects/coffee_01.jpg:1")
    assert result.exit_code == 2, result.output
    assert f"the run's input {work} is not there any more" in result.output
    assert "pass --input with where it is now" in result.output
    result = invoke("replay", out, "objects/coffee_01.jpg:1", "--input", moved)
    assert result.exit_code == 0 and "identical" in result.output, result.output


def test_inspect_record_counts_the_image_of_the_tfds_layout(photos, tmp_path):
    out = tmp_path / "out"
    run_job(photos, out, CHAIN, copies=1, seed=3, tfds=True)
    result = invoke("inspect", out, "--record", "objects/coffee_01.jpg:1")
    assert result.exit_code == 0, result.output
    size = next(line for line in result.output.splitlines() if line.startswith("  image "))
    assert int(size.split(", ")[-1].split()[0]) > 1000, size
