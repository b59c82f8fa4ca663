"""Boxes, instance masks, class masks and keypoints follow every geometric op, checked against the
pixels: a dark image with a bright rectangle keeps its box around the bright pixels."""
import numpy as np
import pytest
import tensorflow as tf

from pipeline import augment, chain, targets
from pipeline.errors import ConfigError
from pipeline.ops import registry

H, W = 60, 80
TOP, LEFT, BOTTOM, RIGHT = 15, 20, 35, 50  # the bright rectangle, pixel edges
SEEDS = 12


def scene():
    image = np.full((H, W, 3), 20, np.uint8)
    image[TOP:BOTTOM, LEFT:RIGHT] = 230
    mask = np.zeros((1, H, W), np.uint8)
    mask[0, TOP:BOTTOM, LEFT:RIGHT] = 1
    return image, mask


def box_only():
    return targets.Targets(boxes=np.array([[TOP / H, LEFT / W, BOTTOM / H, RIGHT / W]]),
                           objects={"image/object/class/label": ("int64_list", [3])})


def with_mask():
    found = box_only()
    found.masks = scene()[1]
    return found


def geometric_steps(name):
    """The op with its test params, sampling that cannot invent objects, sizes that fit."""
    op = registry.get(name)
    params = dict(op.test_params or {})
    if any(p.name == "fill_mode" for p in op.params):
        params["fill_mode"] = "constant"
    if name == "tf.image.pad_to_bounding_box":
        params.update(target_height=90, target_width=100)
    return [dict(op=name, **params)]


def augment_scene(steps, xla=False, seeds=SEEDS, kernel="tensorflow"):
    """(output images, moves) for `seeds` copies of the scene, both traced as the runner does;
    `kernel`: runtime.kernel, how geometric ops resample."""
    steps = chain.normalize(steps)
    image, _ = scene()
    seed_rows = np.array([[i, 7 * i + 1] for i in range(seeds)], np.int32)
    out = tf.function(lambda x, s: augment.build_chain(steps, xla=xla, kernel=kernel)(x, s, 4))(
        np.repeat(image[None], seeds, 0), seed_rows).numpy()
    moves = tf.function(lambda s: augment.build_geometry(steps, xla=xla)(s, H, W))(seed_rows)
    return out, [(m[0].numpy(), int(m[1]), int(m[2])) for m in moves]


def carry_each(found, moves, rules=targets.Rules()):
    return [targets.carry(found, [(t[i], h, w) for t, h, w in moves], rules, H, W)[0]
            for i in range(len(moves[0][0]) if moves else SEEDS)]


def run(steps, found, xla=False, seeds=SEEDS):
    """(output images, carried targets per copy) for `seeds` copies of the scene."""
    out, moves = augment_scene(steps, xla, seeds)
    return out, carry_each(found, moves)


def bright_box(image):
    """[ymin, xmin, ymax, xmax] pixel edges of the bright pixels, or None."""
    ys, xs = np.nonzero(image[..., 0] > 125)
    return None if not len(ys) else np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])


def check_boxes(out, carried, tolerance):
    height, width = out.shape[1:3]
    for image, found in zip(out, carried):
        truth = bright_box(image)
        if truth is None:  # pushed out of the frame: the object is dropped with its label
            assert found.count == 0
            assert found.objects["image/object/class/label"][1] == []
            continue
        assert found.count == 1, truth
        assert found.objects["image/object/class/label"][1] == [3]
        box = found.boxes[0] * [height, width, height, width]
        assert np.abs(box - truth).max() <= tolerance, (box, truth)


GEOMETRIC = sorted(name for name, op in registry.all_ops().items()
                   if op.targets == registry.TRANSFORMED)
BILINEAR = {"tfa.image.rotate", "tfa.image.translate", "tfa.image.transform", "idg",
            "tf.image.resize", "tf.image.resize_with_pad", "tf.image.random_crop_and_resize",
            "tf.image.stateless_sample_distorted_bounding_box"}


def test_geometric_ops_are_declared():
    assert len(GEOMETRIC) >= 25  # every flip, turn, crop, pad, resize, tfa warp and idg
    for name in GEOMETRIC:
        op = registry.get(name)
        fn = op.build(op.resolve(op.test_params or {}, "t"))
        from pipeline.ops import geometry
        assert op.geometry is not None or isinstance(fn, geometry.Projective), name


@pytest.mark.parametrize("name", GEOMETRIC)
def test_every_geometric_op_moves_boxes_and_masks_with_the_pixels(name):
    tolerance = 2 if name in BILINEAR else 1
    out, moves = augment_scene(geometric_steps(name))
    # From the box's corners alone (a rotated box encloses more than the object)...
    check_boxes(out, carry_each(box_only(), moves),
                tolerance + (3 if name in {"tfa.image.rotate", "idg"} else 0))
    carried = carry_each(with_mask(), moves)  # ... tight from the moved mask
    check_boxes(out, carried, tolerance)
    for image, found in zip(out, carried):
        bright = image[..., 0] > 125
        if found.count:
            moved = found.masks[0].astype(bool)
            assert moved.shape == bright.shape
            iou = (moved & bright).sum() / (moved | bright).sum()
            assert iou >= 0.9, (name, iou)


def resamples(name):
    from pipeline.ops import geometry
    op = registry.get(name)
    return isinstance(op.build(op.resolve(op.test_params or {}, "t")), geometry.Projective)


@pytest.mark.parametrize("kernel", ["opencv-uint8", "opencv"])
@pytest.mark.parametrize("name", [name for name in GEOMETRIC if resamples(name)])
def test_the_opencv_kernels_move_pixels_where_boxes_masks_and_keypoints_go(name, kernel):
    """The CPU default resamples with OpenCV (on uint8 or float32 pixels): its pixels land where
    the targets, moved by the geometry alone, say they do."""
    tolerance = 2 if name in BILINEAR else 1
    found = with_mask()
    # The rectangle's centre: wherever the op moves it, the pixel under it stays bright.
    found.keypoints = np.array([[[(TOP + BOTTOM) / 2 / H, (LEFT + RIGHT) / 2 / W]]])
    found.visibility = np.array([[2]])
    out, moves = augment_scene(geometric_steps(name), kernel=kernel)
    carried = carry_each(found, moves)
    check_boxes(out, carried, tolerance)
    for image, moved in zip(out, carried):
        bright = image[..., 0] > 125
        if not moved.count:
            continue
        mask = moved.masks[0].astype(bool)
        assert (mask & bright).sum() / (mask | bright).sum() >= 0.9, name
        if moved.visibility[0, 0]:
            y, x = (moved.keypoints[0, 0] * image.shape[:2]).astype(int)
            assert bright[y, x], (name, y, x)


COMPILED = sorted(name for name in GEOMETRIC
                  if augment.plan(chain.normalize(geometric_steps(name)), xla=True)[-1][0] == "xla")


@pytest.mark.parametrize("name", COMPILED)
def test_geometric_ops_compiled_by_xla_move_boxes_with_their_pixels(name):
    # XLA draws its own random numbers: the geometry of a compiled stage is compiled alike.
    out, moves = augment_scene(geometric_steps(name), xla=True)
    check_boxes(out, carry_each(with_mask(), moves), 2 if name in BILINEAR else 1)


@pytest.mark.parametrize("xla", [False, True])
def test_fused_runs_probability_and_groups_carry_boxes(xla):
    steps = [{"op": "tf.image.random_flip_left_right"},
             {"op": "tfa.image.rotate", "max_degrees": 25, "interpolation": "bilinear"},
             {"op": "tfa.image.translate", "dx": [-6, 6], "dy": [-4, 4],
              "interpolation": "bilinear"},
             {"op": "tfa.image.shear_x", "level": [-0.1, 0.1], "probability": 0.5},
             {"one_of": [{"op": "tf.image.random_flip_up_down"},
                         {"sequence": [{"op": "tfa.image.rotate", "max_degrees": 10,
                                        "interpolation": "bilinear"},
                                       {"op": "tf.image.random_brightness",
                                        "max_delta": 0.05}]}]},
             {"some_of": [{"op": "tf.image.random_rot90"},
                          {"op": "tf.image.flip_left_right"}], "n": [0, 2]},
             {"op": "tf.image.random_contrast", "lower": 0.9, "upper": 1.1}]
    out, carried = run(steps, with_mask(), xla=xla, seeds=12)
    check_boxes(out, carried, 2)
    boxes = {tuple(np.round(found.boxes[0], 2)) for found in carried if found.count}
    assert len(boxes) > 8  # each copy drew its own geometry


@pytest.mark.parametrize("kernel", ["opencv-uint8", "tensorflow"])
def test_a_chain_on_uint8_pixels_moves_them_where_boxes_masks_and_keypoints_go(kernel):
    """flips, uint8.random_brightness_contrast, rotate: with opencv-uint8 every step works on
    the stored pixels (the colour op in the uint8 head, the rotation in the tail). The colour
    op draws no geometry: the moves are those of the same chain with tf.image's brightness in
    its place, and the bright rectangle lands where the targets say; so it does with
    tf.image's brightness and contrast there (computed on levels, before the uint8 warp)."""
    flips = [{"op": "tf.image.random_flip_left_right"},  # (on the CPU: native mirrors)
             {"op": "tf.image.random_flip_up_down"}]
    rotate = {"op": "tfa.image.rotate", "max_degrees": 25, "interpolation": "bilinear"}
    colour = {"op": "uint8.random_brightness_contrast", "contrast": [0.8, 1.2],
              "brightness": [-0.1, 0.1]}  # the rectangle stays above 125, the rest below
    steps = [*flips, colour, rotate]
    if kernel == "opencv-uint8":
        assert [kind for kind, _, _ in augment.plan(chain.normalize(steps), False, True)] \
            == ["uint8"]
    found = with_mask()
    found.keypoints = np.array([[[(TOP + BOTTOM) / 2 / H, (LEFT + RIGHT) / 2 / W]]])
    found.visibility = np.array([[2]])
    out, moves = augment_scene(steps, kernel=kernel)
    brightness = {"op": "tf.image.random_brightness", "max_delta": 0.1}
    _, same = augment_scene([*flips, brightness, rotate], kernel=kernel)
    for (t, h, w), (u, g, v) in zip(moves, same):
        np.testing.assert_array_equal(t, u)
        assert (h, w) == (g, v)
    contrast = {"op": "tf.image.random_contrast", "lower": 0.8, "upper": 1.2}
    out_tf, moves_tf = augment_scene([*flips, brightness, contrast, rotate],
                                     kernel=kernel)
    for images, carried in ((out, carry_each(found, moves)),
                            (out_tf, carry_each(found, moves_tf))):
        check_boxes(images, carried, 2)
        for image, moved in zip(images, carried):
            bright = image[..., 0] > 125
            mask = moved.masks[0].astype(bool)
            assert (mask & bright).sum() / (mask | bright).sum() >= 0.9
            y, x = (moved.keypoints[0, 0] * image.shape[:2]).astype(int)
            assert bright[y, x], (y, x)
    assert len({tuple(np.round(f.boxes[0], 2)) for f in carried}) > 8  # each its own turn


def test_colour_and_occluding_ops_leave_targets_alone():
    names = [name for name, op in registry.all_ops().items()
             if op.targets == registry.UNCHANGED and not name.startswith("keras.")]
    assert len(names) >= 25
    steps = chain.normalize([dict(op=name, **(registry.get(name).test_params or {}))
                             for name in names if "hsv" not in name and "blend" not in name])
    assert augment.build_geometry(steps)(tf.constant([[1, 2]]), H, W) == []


def test_ops_that_cannot_carry_targets_are_refused_with_the_config_path():
    steps = chain.normalize([{"op": "tf.image.random_flip_left_right"},
                             {"op": "tfa.image.elastic_distortion"}])
    with pytest.raises(ConfigError) as refused:
        targets.check_chain(steps, {targets.BOXES})
    assert "augment.chain[1].op" in str(refused.value)
    assert "elastic_distortion cannot carry" in str(refused.value)
    reflect = chain.normalize([{"op": "tfa.image.rotate", "max_degrees": 10,
                                "fill_mode": "reflect"}])
    with pytest.raises(ConfigError) as refused:
        targets.check_chain(reflect, {targets.BOXES})
    assert "augment.chain[0].fill_mode" in str(refused.value)
    targets.check_chain(reflect, {targets.CLASS_MASK})  # a class mask takes the ignore label
    targets.check_chain(reflect, set())  # images alone: anything goes


def test_class_mask_keeps_its_classes_and_fills_the_ignore_label():
    found = box_only()
    found.class_mask = np.zeros((H, W), np.uint8)
    found.class_mask[TOP:BOTTOM, LEFT:RIGHT] = 7
    steps = [{"op": "tfa.image.rotate", "max_degrees": 30, "interpolation": "bilinear",
              "fill_mode": "reflect"}]
    out, carried = run(steps, found)
    for image, moved in zip(out, carried):
        assert set(np.unique(moved.class_mask)) <= {0, 7, 255}
        bright = image[..., 0] > 125
        sevens = moved.class_mask == 7
        assert (sevens & bright).sum() / (sevens | bright).sum() >= 0.85


def test_keypoints_move_and_swap_sides_in_a_mirror():
    found = box_only()
    # Two keypoints: the rectangle's left-edge centre (slot 0) and right-edge centre (slot 1).
    found.keypoints = np.array([[[25 / H, (LEFT + 0.5) / W], [25 / H, (RIGHT - 0.5) / W]]])
    found.visibility = np.array([[2, 2]])
    moves = [(np.array([-1, 0, W - 1, 0, 1, 0, 0, 0], np.float32), H, W)]
    plain, _ = targets.carry(found, moves, targets.Rules(), H, W)
    swapped, _ = targets.carry(found, moves, targets.Rules(keypoint_flip=(1, 0)), H, W)
    np.testing.assert_allclose(plain.keypoints[0] * [H, W], [[25, W - LEFT - 0.5],
                                                              [25, W - RIGHT + 0.5]])
    # mirrored, the right edge's point is now on the left: slot 0 ("left") takes it
    np.testing.assert_allclose(swapped.keypoints[0] * [H, W], [[25, W - RIGHT + 0.5],
                                                                [25, W - LEFT - 0.5]])
    out, carried = run([{"op": "tf.image.random_crop", "height": 30, "width": 30}], found)
    for image, moved in zip(out, carried):
        for point, visible in zip(moved.keypoints[0], moved.visibility[0]):
            if visible:  # on the bright edge it was on
                y, x = (point * [30, 30]).astype(int)
                assert image[y, x, 0] > 125
            else:
                assert np.isnan(point).all()


def test_rules_drop_objects_with_every_parallel_list():
    found = targets.Targets(
        boxes=np.array([[0.1, 0.0, 0.5, 0.2], [0.2, 0.3, 0.9, 0.9]]),
        objects={"image/object/class/label": ("int64_list", [1, 2]),
                 "image/object/class/text": ("bytes_list", [b"cat", b"dog"]),
                 "image/object/difficult": ("int64_list", [0, 1])})
    shift = [(np.array([1, 0, 10, 0, 1, 0, 0, 0], np.float32), H, W)]  # content moves left 10
    kept, counts = targets.carry(found, shift, targets.Rules(min_visibility=0.6), H, W)
    assert counts == {"objects_kept": 1, "objects_dropped": 1, "objects_clipped": 0}
    assert {name: values for name, (_, values) in kept.objects.items()} == {
        "image/object/class/label": [2], "image/object/class/text": [b"dog"],
        "image/object/difficult": [1]}
    kept, counts = targets.carry(found, shift, targets.Rules(), H, W)
    assert counts["objects_kept"] == 2 and counts["objects_clipped"] == 1
    out = [(np.array([1, 0, 500, 0, 1, 0, 0, 0], np.float32), H, W)]  # everything leaves
    dropped, _ = targets.carry(found, out, targets.Rules(keep_empty=False), H, W)
    assert dropped is None
    empty, _ = targets.carry(found, out, targets.Rules(), H, W)
    assert empty.count == 0 and all(values == [] for _, values in empty.objects.values())


def test_dense_float_masks_and_areas_are_read_moved_and_recomputed():
    example = tf.train.Example()
    feature = example.features.feature
    for key, value in zip(targets.BOX_KEYS, (TOP / H, LEFT / W, BOTTOM / H, RIGHT / W)):
        feature[key].float_list.value.append(value)
    feature["image/object/area"].float_list.value.append(999.0)
    feature["image/object/class/label"].int64_list.value.append(3)
    feature[targets.MASK_KEY].float_list.value.extend(scene()[1].ravel().astype(float))
    found = targets.decode(targets.from_features(feature), H, W)
    np.testing.assert_array_equal(found.masks, scene()[1])
    crop = [(np.array([1, 0, 30, 0, 1, 0, 0, 0], np.float32), H, 30)]  # columns 30..59
    moved, _ = targets.carry(found, crop, targets.Rules(), H, W)
    assert moved.objects["image/object/area"][1] == [(BOTTOM - TOP) * (RIGHT - 30)]
    np.testing.assert_allclose(moved.boxes[0] * [H, 30, H, 30], [TOP, 0, BOTTOM, RIGHT - 30])
    out = tf.train.Example()
    targets.put(out.features.feature, moved)
    again = targets.decode(targets.from_features(out.features.feature), H, 30)
    np.testing.assert_array_equal(again.masks, moved.masks)
    bad = tf.train.Example()
    bad.CopyFrom(example)
    del bad.features.feature["image/object/bbox/xmax"]
    with pytest.raises(targets.TargetError, match="missing image/object/bbox/xmax"):
        targets.from_features(bad.features.feature)
