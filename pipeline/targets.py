"""An input's targets (boxes, instance masks, a class mask, keypoints): read from the OD API /
DeepLab features of a tf.Example, carried through the chain's moves, written back alike.

The chain's geometry (chain.build_geometry) says, per copy, where the pixels went: a list of
moves, each an output -> input transform and an output size. Every target follows every move:
  * boxes: the enclosing box of the 4 transformed corners, clipped to the frame (after the last
    move, tight around the object's transformed instance mask where it has one);
  * masks: resampled through the same transform with nearest sampling (never blended into
    invented values); what comes from outside the frame is 0 (instance masks) or the ignore
    label (class masks);
  * keypoints: mapped as points; out of frame they keep their slot with visibility 0 and NaN
    coordinates (as the OD API does); a mirroring move permutes left and right.
Then the rules (config `targets:`) drop objects and, with them, every parallel per-object
feature (class, text, difficult, ...). Steps that only change pixel values move nothing.

Coordinates: boxes and keypoints are continuous (pixel i covers [i, i + 1)), normalised as in
the OD API ([ymin, xmin, ymax, xmax], keypoint y and x in [0, 1]); transforms map pixel centres.
"""
import dataclasses
import io
import logging
from typing import Optional

import numpy as np

from pipeline.errors import ConfigError

log = logging.getLogger("augbatch")

BOX_KEYS = ("image/object/bbox/ymin", "image/object/bbox/xmin", "image/object/bbox/ymax",
            "image/object/bbox/xmax")
MASK_KEY = "image/object/mask"
KEYPOINT_KEYS = ("image/object/keypoint/y", "image/object/keypoint/x")
VISIBILITY_KEY = "image/object/keypoint/visibility"
CLASS_MASK_KEY = "image/segmentation/class/encoded"
CLASS_MASK_FORMAT_KEY = "image/segmentation/class/format"
OBJECT_PREFIX = "image/object/"
AREA_KEY = "image/object/area"
CLASS_KEY = "image/object/class/label"
CLASS_TEXT_KEY = "image/object/class/text"
# What augbatch computes for each output; an input's own values are replaced.
OWN_KEYS = (*BOX_KEYS, MASK_KEY, *KEYPOINT_KEYS, VISIBILITY_KEY, CLASS_MASK_KEY,
            CLASS_MASK_FORMAT_KEY, "image/key/sha256")

# Copies mirrored with keypoints and no targets.keypoint_flip (a manifest count).
MIRRORED_IN_PLACE = "copies_mirrored_keypoints_in_place"
# Kinds of target, as validation and the manifest name them.
BOXES, MASKS, CLASS_MASK, KEYPOINTS = "boxes", "instance masks", "class mask", "keypoints"


@dataclasses.dataclass(frozen=True)
class Rules:
    """What happens to objects the moves clip or push out (config section `targets:`)."""
    min_visibility: float = 0.0  # drop an object keeping less of its box than this
    min_area: float = 0.0  # ... or whose box is smaller than this, in output pixels
    min_side: float = 0.0  # ... or whose box's shorter side is below this, in pixels
    keep_empty: bool = True  # write a copy left with no object (false: drop the copy)
    ignore_label: int = 255  # class-mask value where the moves bring in no pixel
    keypoint_flip: tuple = ()  # left/right permutation of keypoint slots for mirroring moves


@dataclasses.dataclass
class Targets:
    """One input's targets. Boxes normalised [N, 4]; `objects`: the other per-object features,
    name -> (proto kind, values), each with N values (or N * K for keypoint lists)."""
    boxes: np.ndarray
    objects: dict
    masks: Optional[np.ndarray] = None  # uint8 [N, H, W] (0 or 1), once decoded
    mask_pngs: Optional[list] = None  # the input's PNG-encoded instance masks, before decoding
    class_mask: Optional[np.ndarray] = None  # uint8 [H, W] class indices, once decoded
    class_mask_png: Optional[bytes] = None
    class_mask_file: Optional[str] = None  # the mask's file, for messages (a mask folder's)
    keypoints: Optional[np.ndarray] = None  # float [N, K, 2] normalised (y, x)
    visibility: Optional[np.ndarray] = None  # int [N, K]
    has_boxes: bool = True  # False: a segmentation-only record (no object lists)

    @property
    def count(self):
        return len(self.boxes)

    def kinds(self):
        kinds = {BOXES} if self.has_boxes else set()
        if self.masks is not None or self.mask_pngs is not None:
            kinds.add(MASKS)
        if self.class_mask is not None or self.class_mask_png is not None:
            kinds.add(CLASS_MASK)
        if self.keypoints is not None:
            kinds.add(KEYPOINTS)
        return kinds


def is_target_feature(name):
    """A feature augbatch rewrites for each output of an input with targets."""
    return (name in OWN_KEYS or name.startswith(OBJECT_PREFIX)
            or name.startswith("image/segmentation/"))


class TargetError(ValueError):
    """A record whose targets cannot be read (an error record, naming the feature)."""


# --- reading -----------------------------------------------------------------------------------

def _values(feature):
    kind = feature.WhichOneof("kind")
    return (kind, list(getattr(feature, kind).value)) if kind else (None, [])


def has_targets(features):
    """Whether a tf.Example's feature map holds boxes or a class mask."""
    return any(k in features for k in BOX_KEYS) or CLASS_MASK_KEY in features


def from_features(features):
    """The targets in a tf.Example's features (a proto map), or None if it has none.
    Raises TargetError for lists that disagree."""
    if not has_targets(features):
        return None
    coords = [_values(features[k])[1] if k in features else None for k in BOX_KEYS]
    if any(c is None for c in coords) and any(c is not None for c in coords):
        missing = [k for k, c in zip(BOX_KEYS, coords) if c is None]
        raise TargetError(f"boxes need all four of {', '.join(BOX_KEYS)}; missing "
                          f"{', '.join(missing)}")
    count = len(coords[0]) if coords[0] is not None else 0
    if coords[0] is not None:
        lengths = {len(c) for c in coords}
        if len(lengths) != 1:
            raise TargetError(f"box coordinate lists differ in length ({sorted(lengths)})")
    boxes = (np.array(coords, np.float64).T.reshape(-1, 4) if count
             else np.zeros((0, 4), np.float64))
    if count and (not np.all(np.isfinite(boxes)) or boxes.min() < -0.01 or boxes.max() > 1.01
                  or np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1])):
        raise TargetError("boxes must be normalised [ymin, xmin, ymax, xmax] in [0, 1] with "
                          "min <= max (as the OD API writes them)")
    targets = Targets(boxes=np.clip(boxes, 0.0, 1.0), objects={},
                      has_boxes=coords[0] is not None)
    if MASK_KEY in features:
        kind, values = _values(features[MASK_KEY])
        if kind == "bytes_list":
            if len(values) != count:
                raise TargetError(f"{MASK_KEY} holds {len(values)} PNG masks for {count} boxes")
            targets.mask_pngs = values
        elif kind == "float_list":  # dense [N, H, W], shaped once the image size is known
            targets.mask_pngs = np.array(values, np.float32)
        elif count:
            raise TargetError(f"{MASK_KEY} must be PNG strings or floats, it holds {kind}")
    if all(k in features for k in KEYPOINT_KEYS):
        ys, xs = (np.array(_values(features[k])[1], np.float64) for k in KEYPOINT_KEYS)
        if len(ys) != len(xs) or (count and len(ys) % count) or (not count and len(ys)):
            raise TargetError(f"keypoint lists of {len(ys)} y and {len(xs)} x values do not "
                              f"divide among {count} objects")
        per_object = len(ys) // count if count else 0
        targets.keypoints = np.stack([ys, xs], -1).reshape(count, per_object, 2)
        if VISIBILITY_KEY in features:
            visibility = np.array(_values(features[VISIBILITY_KEY])[1], np.int64)
            if len(visibility) != len(ys):
                raise TargetError(f"{VISIBILITY_KEY} holds {len(visibility)} values for "
                                  f"{len(ys)} keypoints")
        else:  # NaN marks a missing keypoint in the OD API
            visibility = np.where(np.isnan(ys) | np.isnan(xs), 0, 2)
        targets.visibility = visibility.reshape(count, per_object)
    if CLASS_MASK_KEY in features:
        values = _values(features[CLASS_MASK_KEY])[1]
        if len(values) != 1:
            raise TargetError(f"{CLASS_MASK_KEY} must hold one PNG, it holds {len(values)}")
        targets.class_mask_png = values[0]
    for name in sorted(features):
        if name.startswith(OBJECT_PREFIX) and name not in OWN_KEYS:
            kind, values = _values(features[name])
            per = len(values) / count if count else 0
            if values and per not in (1, targets.keypoints.shape[1]
                                      if targets.keypoints is not None else 1):
                raise TargetError(f"{name} holds {len(values)} values for {count} objects")
            targets.objects[name] = (kind, values)
    return targets


def decode(targets, height, width):
    """Decode the masks (PNG) once the image's size is known; check every size matches."""
    if isinstance(targets.mask_pngs, np.ndarray):
        dense = targets.mask_pngs
        if dense.size != targets.count * height * width:
            raise TargetError(f"{MASK_KEY} holds {dense.size} floats, not {targets.count} masks "
                              f"of {height}x{width}")
        targets.masks = (dense.reshape(targets.count, height, width) > 0.5).astype(np.uint8)
    elif targets.mask_pngs is not None:
        masks = [_png(data, f"{MASK_KEY}[{i}]", height, width)
                 for i, data in enumerate(targets.mask_pngs)]
        targets.masks = (np.stack(masks) > 0).astype(np.uint8) if masks else \
            np.zeros((0, height, width), np.uint8)
    targets.mask_pngs = None
    if targets.class_mask_png is not None:
        targets.class_mask = _png(targets.class_mask_png,
                                  targets.class_mask_file or CLASS_MASK_KEY, height, width)
        targets.class_mask_png = None
    return targets


def _png(data, name, height, width):
    """A single-channel mask image as indices: a palette PNG gives its palette indices (never
    its colours), a grey one its values."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("P", "L", "1", "I", "I;16"):
                raise TargetError(f"{name} is a {image.mode} image; masks must hold one channel "
                                  "of class indices (a palette or greyscale PNG; a mask that "
                                  "paints classes in colours needs them turned into indices)")
            array = np.asarray(image)
    except TargetError:
        raise
    except Exception as e:  # noqa: BLE001 - any undecodable mask is this record's error
        raise TargetError(f"{name} cannot be decoded: {e}") from None
    if array.shape != (height, width):
        raise TargetError(f"{name} is {array.shape[1]}x{array.shape[0]}, the image "
                          f"{width}x{height}; masks must match the image, pixel for pixel")
    if array.max(initial=0) > 255:
        raise TargetError(f"{name} holds values above 255")
    return array.astype(np.uint8)


# --- carrying ----------------------------------------------------------------------------------

def _matrix(flat):
    return np.append(np.asarray(flat, np.float64), 1.0).reshape(3, 3)


def _continuous(flat):
    """A transform of pixel indices (output -> input) as one of continuous coordinates, where
    pixel i's centre is i + 0.5."""
    shift, back = np.eye(3), np.eye(3)
    shift[:2, 2], back[:2, 2] = -0.5, 0.5
    return back @ _matrix(flat) @ shift


def _forward(points_xy, inverse):
    """Points [..., 2] (x, y) mapped by the 3x3 `inverse` (input -> output)."""
    flat = points_xy.reshape(-1, 2)
    homogeneous = np.concatenate([flat, np.ones((len(flat), 1))], 1) @ inverse.T
    with np.errstate(divide="ignore", invalid="ignore"):
        out = homogeneous[:, :2] / homogeneous[:, 2:]
    return out.reshape(points_xy.shape)


def carry(targets, moves, rules, height, width):
    """The targets after `moves` [(flat transform [8], out_height, out_width)] of one copy of
    an image of height x width. Returns (Targets, counts) or (None, counts) when the rules drop
    the copy; counts: objects kept, dropped, clipped."""
    import tensorflow as tf
    count = targets.count
    corners_x = np.stack([targets.boxes[:, 1], targets.boxes[:, 3]], 1) * width
    corners_y = np.stack([targets.boxes[:, 0], targets.boxes[:, 2]], 1) * height
    boxes = np.stack([corners_x[:, 0], corners_y[:, 0], corners_x[:, 1], corners_y[:, 1]], 1)
    visible = np.ones(count)
    masks, class_mask = targets.masks, targets.class_mask
    keypoints = None
    if targets.keypoints is not None:
        keypoints = targets.keypoints[..., ::-1] * [width, height]  # (x, y) pixels
    visibility = None if targets.visibility is None else targets.visibility.copy()
    order = list(rules.keypoint_flip)
    if order and keypoints is not None and len(order) != keypoints.shape[1]:
        raise TargetError(f"targets.keypoint_flip orders {len(order)} keypoints, but this "
                          f"input's objects have {keypoints.shape[1]} each")
    mirrored = False
    for flat, out_h, out_w in moves:
        out_h, out_w = int(out_h), int(out_w)
        inverse = np.linalg.inv(_continuous(flat))
        if count:
            x0, y0, x1, y1 = boxes.T
            corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1),
                                np.stack([x0, y1], 1), np.stack([x1, y1], 1)], 1)
            moved = _forward(corners, inverse)
            boxes = np.concatenate([moved.min(1), moved.max(1)], 1)
            area = _area(boxes)
            boxes = np.clip(boxes, 0, [out_w, out_h, out_w, out_h])
            with np.errstate(divide="ignore", invalid="ignore"):
                visible *= np.where(area > 0, _area(boxes) / area, 0.0)
        if masks is not None and count:
            masks = _resample(tf, masks, flat, out_h, out_w, 0)
        if class_mask is not None:
            class_mask = _resample(tf, class_mask[None], flat, out_h, out_w,
                                   rules.ignore_label)[0]
        if keypoints is not None and keypoints.size:
            keypoints = _forward(keypoints, inverse)
            outside = ~((keypoints[..., 0] >= 0) & (keypoints[..., 0] < out_w)
                        & (keypoints[..., 1] >= 0) & (keypoints[..., 1] < out_h))
            visibility = np.where(outside | np.isnan(keypoints).any(-1), 0, visibility)
            if np.linalg.det(_matrix(flat)) < 0:
                mirrored = not mirrored
                if order:
                    keypoints, visibility = keypoints[:, order], visibility[:, order]
        height, width = out_h, out_w

    if masks is not None and count:  # tight boxes from what is left of each object
        rows, cols = masks.any(2), masks.any(1)
        for i in range(count):
            if rows[i].any():
                ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
                boxes[i] = [xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]
            else:
                visible[i] = 0.0
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1) if count \
        else np.zeros((0, 2))
    shortest = sides.min(1) if count else np.zeros(0)
    keep = ((visible > 0) & (visible >= rules.min_visibility) & (shortest > 0)
            & (_area(boxes) >= rules.min_area) & (shortest >= rules.min_side))
    counts = {"objects_kept": int(keep.sum()), "objects_dropped": int(count - keep.sum()),
              "objects_clipped": int((keep & (visible < 1.0 - 1e-9)).sum())}
    if mirrored and not order and keypoints is not None and keypoints.shape[1] > 1:
        counts[MIRRORED_IN_PLACE] = 1  # (the run warns: left and right may need swapping)
    if targets.has_boxes and not keep.any() and not rules.keep_empty:
        return None, counts
    out = Targets(boxes=(boxes[keep][:, [1, 0, 3, 2]] / [height, width, height, width]
                         if count else np.zeros((0, 4))), objects={},
                  has_boxes=targets.has_boxes)
    for name, (kind, values) in targets.objects.items():
        per = len(values) // count if count else 1
        kept = [v for i in np.flatnonzero(keep) for v in values[i * per:(i + 1) * per]]
        if name == AREA_KEY:  # the area the object now covers, in output pixels
            kept = ([float(m.sum()) for m in masks[keep]] if masks is not None
                    else [float(a) for a in _area(boxes[keep])])
        out.objects[name] = (kind, kept)
    if masks is not None:
        out.masks = masks[keep] if count else masks
    out.class_mask = class_mask
    if keypoints is not None:
        kept_points = keypoints[keep] if count else keypoints
        kept_visibility = visibility[keep] if count else visibility
        normalised = kept_points[..., ::-1] / [height, width]
        out.keypoints = np.where(kept_visibility[..., None] > 0, normalised, np.nan)
        out.visibility = kept_visibility
    return out, counts


def _area(boxes):
    """[N, 4] (x0, y0, x1, y1) -> [N] areas (0 for empty boxes)."""
    return (np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0))


def _resample(tf, masks, flat, out_h, out_w, fill):
    """uint8 masks [N, H, W] through one transform, nearest, constant `fill` outside."""
    images = tf.transpose(tf.constant(masks, tf.uint8), [1, 2, 0])[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=tf.constant([flat], tf.float32),
        output_shape=tf.constant([out_h, out_w], tf.int32),
        fill_value=tf.constant(float(fill), tf.float32), interpolation="NEAREST",
        fill_mode="CONSTANT")
    return np.transpose(out[0].numpy(), [2, 0, 1])


# --- writing -----------------------------------------------------------------------------------

def put(feature, targets):
    """Write `targets` into a tf.Example's feature map (the OD API / DeepLab keys)."""
    for key in OWN_KEYS:
        if key in feature:
            del feature[key]
    for name in [k for k in feature if k.startswith(OBJECT_PREFIX)]:
        del feature[name]
    if targets.has_boxes:  # (present and empty for a copy with no object left)
        for key, column in zip(BOX_KEYS, targets.boxes.T if targets.count else [[]] * 4):
            feature[key].float_list.SetInParent()
            feature[key].float_list.value.extend(float(v) for v in column)
    for name, (kind, values) in targets.objects.items():
        getattr(feature[name], kind or "int64_list").SetInParent()
        getattr(feature[name], kind or "int64_list").value.extend(values)
    if targets.masks is not None:
        feature[MASK_KEY].bytes_list.value.extend(_encode_png(m) for m in targets.masks)
    if targets.class_mask is not None:
        feature[CLASS_MASK_KEY].bytes_list.value.append(_encode_png(targets.class_mask))
        feature[CLASS_MASK_FORMAT_KEY].bytes_list.value.append(b"png")
    if targets.keypoints is not None:
        for key, axis in zip(KEYPOINT_KEYS, (0, 1)):
            feature[key].float_list.value.extend(
                float(v) for v in targets.keypoints[..., axis].ravel())
        feature[VISIBILITY_KEY].int64_list.value.extend(
            int(v) for v in targets.visibility.ravel())


def _encode_png(mask):
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


# --- validation --------------------------------------------------------------------------------

def check_chain(steps, kinds, path="augment.chain"):
    """Refuse a chain that cannot carry these kinds of target: exit 2 before anything runs,
    naming the step's config path and an op that can."""
    from pipeline.ops import geometry, registry
    if not kinds:
        return
    what = ", ".join(sorted(kinds))
    for step_path, step in _op_steps(steps, path):
        op = registry.get(step["op"])
        if op.targets is None:
            raise ConfigError(f"{step_path}.op", f"{op.name} cannot carry the inputs' {what}: "
                              "it would move the pixels and leave them behind",
                              hint=_hint(op.name))
        if op.targets == registry.TRANSFORMED and kinds - {CLASS_MASK}:
            fn = op.build(step["params"])
            if isinstance(fn, geometry.Projective) and fn.fill_mode != "constant":
                raise ConfigError(f"{step_path}.fill_mode", f"{op.name} with fill_mode "
                                  f"'{fn.fill_mode}' makes unlabelled copies of objects at the "
                                  f"border; with {what} use fill_mode: constant")


def _op_steps(steps, path):
    """(config path, step) of every op step of a normalized chain, depth first."""
    from pipeline import chain as chain_mod
    for i, step in enumerate(steps):
        if "op" in step:
            yield f"{path}[{i}]", step
        for kind in chain_mod.GROUPS:
            yield from _op_steps(step.get(kind, []), f"{path}[{i}].{kind}")


def _hint(name):
    if name.startswith("keras.layers."):
        return ("augbatch runs Keras layers on images only; tf.image.random_flip_left_right, "
                "tfa.image.rotate, tf.image.random_crop ... carry boxes and masks")
    if name.startswith("python"):
        return "a python op's geometry is unknown; the tf.image and tfa.image ops carry targets"
    return "tfa.image.rotate, tfa.image.translate, tf.image.random_crop ... carry targets"


def peek_kinds(discovery, job, records=16):
    """The kinds of target in the first records of the first TFRecord input (what validation
    checks the chain against before anything runs); none for image folders; a labelled
    dataset's (COCO, YOLO ...) as its discovery found them."""
    import tensorflow as tf
    from pipeline import sources
    if discovery.kinds is not None:
        return set(discovery.kinds)
    if discovery.kind != "tfrecord" or not discovery.refs:
        return set()
    kinds = set()
    try:
        with sources.open_records(discovery.refs[0].path) as stream:
            for index, record in enumerate(sources.iter_records(stream)):
                if index == records:
                    break
                found = from_features(tf.train.Example.FromString(record).features.feature)
                kinds |= found.kinds() if found is not None else set()
    except Exception:  # noqa: BLE001 - unreadable records become error records in the run
        pass
    return kinds


def with_dataset_keypoint_flip(job, discovery):
    """`job` with the dataset's own left/right pairs of keypoints (YOLO's flip_idx, COCO's
    left_/right_ names) as targets.keypoint_flip, unless the config sets it. Refuses a
    keypoint_flip of another length than the dataset's keypoints (exit 2, before the run)."""
    rules = job.target_rules
    order = rules.keypoint_flip or discovery.keypoint_flip
    if order and discovery.keypoints and len(order) != discovery.keypoints:
        raise ConfigError("targets.keypoint_flip", f"orders {len(order)} keypoints, but the "
                          f"inputs' objects have {discovery.keypoints} each",
                          hint="give slot i the keypoint a mirrored copy puts there")
    if order == rules.keypoint_flip:
        return job
    log.info("keypoints: a mirrored copy swaps them as the dataset pairs them, %s "
             "(targets.keypoint_flip sets another order)", list(order))
    return dataclasses.replace(job, target_rules=dataclasses.replace(rules,
                                                                     keypoint_flip=order))
