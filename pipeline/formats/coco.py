"""COCO instances JSON: boxes, polygon and RLE masks, keypoints, crowd flags and categories.

What labelling tools export (a JSON beside its images) and the official layout
(annotations/instances_train2017.json beside train2017/); `input.images` names the image
folder when it is elsewhere. Each JSON is a split when its name or folder says so
(instances_val2017.json, valid/_annotations.coco.json).
Labels are the category ids, as the OD API's create_coco_tf_record writes them, ids that need
not be contiguous; the class text is the category's name. Keypoints named by side (left_eye,
right_eye) give the default targets.keypoint_flip: a mirrored copy swaps them.
"""
import json
import logging
import os
import posixpath
import re

import numpy as np

from pipeline import formats, sources
from pipeline import targets as targets_mod
from pipeline.errors import UserError

NAME = "coco"
CROWD_KEY = "image/object/is_crowd"
FOLDER_PROBES = 16  # images looked for in each candidate folder (the first may be missing)

log = logging.getLogger("augbatch")


def _is_coco(path):
    if not path.lower().endswith(".json"):
        return False
    head = formats.head(path)
    return head.lstrip()[:1] == b"{" and b'"images"' in head


def detect(found):
    return any(_is_coco(f) for f, _ in formats.files_of(found))


def _split(json_path):
    name = posixpath.basename(json_path).lower()
    for split in formats.SPLIT_NAMES:
        if re.search(rf"(^|[^a-z]){split}", name):
            return split
    return None


def _image_folder(job, json_path, data):
    """Where the images named in `data` are: input.images, beside the JSON, in images/ beside
    it, or (official layout) in ../train2017 for annotations/instances_train2017.json."""
    here = posixpath.dirname(json_path) if "://" in json_path else os.path.dirname(json_path)
    stem = re.sub(r"^(instances|person_keypoints)_", "", posixpath.basename(json_path)[:-5])
    candidates = ([job.images_dir] if job.images_dir else []) + [
        here, formats.join(here, "images"), formats.join(os.path.dirname(here), stem),
        formats.join(os.path.dirname(here), "images")]
    names = [image["file_name"] for image in data["images"][:FOLDER_PROBES]]
    if not names:
        return candidates[0]
    for folder in candidates:
        if any(formats.exists(formats.join(folder, name)) for name in names):
            return folder
    raise UserError(f"{json_path}: none of its first {len(names)} images ({names[0]!r} ...) is "
                    f"in {', '.join(candidates)}", hint="set input.images in the config to the "
                    "folder holding the images (e.g. train2017/)")


def _load(path):
    try:
        data = json.loads(formats.read_text(path))
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not \
            isinstance(data.get("annotations", []), list):
        raise UserError(f"{path} is not a COCO instances file (it needs an 'images' list and "
                        "an 'annotations' list)")
    return data


def keypoint_flip(categories):
    """The left/right pairs of the keypoints' names (left_eye <-> right_eye, as COCO's person
    keypoints are named), as a targets.keypoint_flip; () where the names have no sides, or a
    side without its other, or the categories name their keypoints differently."""
    named = {tuple(str(n).lower() for n in c["keypoints"]) for c in categories
             if c.get("keypoints")}
    if len(named) != 1:
        return ()
    names = next(iter(named))
    slot = {name: i for i, name in enumerate(names)}
    order = [slot.get(re.sub("left|right", lambda m: {"left": "right", "right": "left"}[
        m.group()], name)) for name in names]
    identity = list(range(len(names)))
    return () if None in order or sorted(order) != identity or order == identity \
        else tuple(order)


def discover(job, found):
    refs, label_map, kinds, rejected = [], {}, {targets_mod.BOXES}, []
    listed = formats.files_of(found)
    referenced, layouts = set(), set()  # (keypoints per object, their left/right pairs)
    for path, base in listed:
        if not _is_coco(path):
            continue
        data = _load(path)
        categories = {c["id"]: c for c in data.get("categories", [])}
        if 0 in categories:
            log.warning("%s: category id 0 (%r) is written as label 0, which the TF Object "
                        "Detection API keeps for the background", path, categories[0].get("name"))
        label_map.update({c["name"]: int(c["id"]) for c in categories.values()})
        per_image = {}
        for annotation in data.get("annotations", []):
            per_image.setdefault(annotation.get("image_id"), []).append(annotation)
        orphans = sorted(set(per_image) - {image.get("id") for image in data["images"]}, key=str)
        if orphans:
            count = sum(len(per_image[i]) for i in orphans)
            log.warning("%s: %d annotation%s name%s image ids that are not in its images list "
                        "(%s%s): left out", path, count, "" if count == 1 else "s",
                        "s" if count == 1 else "", ", ".join(map(str, orphans[:5])),
                        " ..." if len(orphans) > 5 else "")
        keypoint_count = max((len(c.get("keypoints", [])) for c in categories.values()),
                             default=0)
        if any(a.get("segmentation") for a in data.get("annotations", [])):
            kinds.add(targets_mod.MASKS)
        if keypoint_count and any(a.get("num_keypoints", 0) or a.get("keypoints")
                                  for a in data.get("annotations", [])):
            kinds.add(targets_mod.KEYPOINTS)
        else:
            keypoint_count = 0
        if keypoint_count:
            layouts.add((keypoint_count, keypoint_flip(categories.values())))
        folder = _image_folder(job, path, data)
        split = _split(path) or formats.split_of(formats.relative(path, base))
        ids = {}
        for image in data["images"]:
            other = ids.setdefault(image["file_name"], image.get("id"))
            if other != image.get("id"):
                raise UserError(f"{path}: images {other} and {image.get('id')} are both "
                                f"{image['file_name']!r}", hint="list each file once in "
                                "'images' (with all its annotations under its one id)")
            image_path = formats.join(folder, image["file_name"])
            referenced.add(os.path.normpath(image_path))
            if formats.relative(image_path, base) == image_path and sources.is_local(path):
                # (images outside the input's folder: keys relative to a folder holding both)
                base = os.path.commonpath([os.path.dirname(path), os.path.dirname(image_path)])
            key = formats.key_of(image_path, base)
            objects = [{
                "id": a.get("id"), "bbox": a.get("bbox"), "label": a.get("category_id"),
                "name": categories.get(a.get("category_id"), {}).get("name"),
                "crowd": int(a.get("iscrowd", 0)), "area": a.get("area"),
                "segmentation": a.get("segmentation") or None,
                "keypoints": a.get("keypoints") or None}
                for a in per_image.get(image.get("id"), [])]
            refs.append(formats.Ref(key, image_path, split=split, annotation={
                "file": path, "id": image.get("id"),
                "size": (image.get("height"), image.get("width")), "objects": objects,
                "masks": targets_mod.MASKS in kinds, "keypoints": keypoint_count}))
    # Images beside the JSON that it does not name have no annotation: said, not dropped.
    for path, base in listed:
        if formats.is_image(path) and os.path.normpath(path) not in referenced:
            rejected.append((formats.Ref(formats.key_of(path, base), path), "ValueError",
                             "image not in the COCO annotations",
                             f"{sources.printable(path)} is in no COCO JSON's images list"))
    count, flip = layouts.pop() if len(layouts) == 1 else (0, ())
    return formats.Listing(refs, label_map, kinds, rejected, keypoints=count,
                           keypoint_flip=flip)


def read(ref, height, width):
    info = ref.annotation
    where = f"{info['file']} (image id {info['id']})"
    h, w = info["size"]
    if (h, w) != (None, None) and (h, w) != (height, width):
        raise formats.size_differs(where, (h, w), ref.path, height, width)
    boxes, masks, points, visibility = [], [], [], []
    k = info["keypoints"]
    for obj in info["objects"]:
        bbox = obj["bbox"]
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            raise formats.AnnotationError(f"{where}: annotation {obj['id']} has bbox {bbox!r};"
                                          " expected [x, y, width, height] in pixels")
        if obj["name"] is None:
            raise formats.AnnotationError(f"{where}: annotation {obj['id']} has category_id "
                                          f"{obj['label']!r}, not in the categories")
        x, y, bw, bh = bbox
        boxes.append((x, y, x + bw, y + bh))
        if info["masks"]:
            masks.append(_mask(obj, height, width, where) if obj["segmentation"] is not None
                         else formats.box_mask(boxes[-1], height, width))
        if k:
            values = np.asarray(obj["keypoints"] or [0] * 3 * k, np.float64)
            if values.size != 3 * k:
                raise formats.AnnotationError(f"{where}: annotation {obj['id']} has "
                                              f"{values.size} keypoint values, not 3 x {k}")
            values = values.reshape(k, 3)
            shown = values[:, 2] > 0
            points.append(np.where(shown[:, None], values[:, [1, 0]] / [height, width], np.nan))
            visibility.append(values[:, 2].astype(np.int64))
    objs = info["objects"]
    found = targets_mod.Targets(
        boxes=formats.pixel_boxes(boxes, height, width, where,
                                  [f"annotation {o['id']}" for o in info["objects"]]),
        objects=formats.objects([o["label"] for o in objs], [o["name"] for o in objs], **{
            CROWD_KEY: ("int64_list", [o["crowd"] for o in objs]),
            targets_mod.AREA_KEY: ("float_list", [float(o["area"] or 0) for o in objs])}))
    if info["masks"]:
        found.masks = (np.stack(masks) if masks else np.zeros((0, height, width), np.uint8))
    if k:
        found.keypoints = np.array(points, np.float64).reshape(-1, k, 2)
        found.visibility = np.array(visibility, np.int64).reshape(-1, k)
    return found


def _mask(obj, height, width, where):
    segmentation = obj["segmentation"]
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if (not isinstance(polygon, list) or len(polygon) % 2
                    or not all(isinstance(v, (int, float)) for v in polygon)):
                raise formats.AnnotationError(f"{where}: annotation {obj['id']} has the polygon "
                                              f"{str(polygon)[:80]}; expected x, y pairs")
        return formats.polygon_mask(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = list(segmentation.get("size", [height, width]))
        if size != [height, width]:
            raise formats.AnnotationError(f"{where}: annotation {obj['id']}'s RLE is "
                                          f"{size[1]}x{size[0]}, the image {width}x{height}",
                                          reason="annotation size differs from the image")
        try:
            return rle_mask(segmentation["counts"], height, width)
        except ValueError as e:
            raise formats.AnnotationError(f"{where}: annotation {obj['id']}: {e}") from None
    raise formats.AnnotationError(f"{where}: annotation {obj['id']} has a segmentation that "
                                  "is neither polygons nor RLE")


def rle_counts(text):
    """The run lengths of a compressed RLE string: 5 bits per character (offset by 48), a
    sixth bit saying another character follows, the last one's top bit the sign; from the
    third run on, each is stored as the difference to the run two before."""
    counts, position = [], 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("compressed RLE ends inside a number")
            c = ord(text[position]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            position += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_mask(counts, height, width):
    """uint8 [H, W] of an RLE: alternate runs of 0 and 1 over the pixels in column order."""
    if isinstance(counts, (bytes, str)):
        counts = rle_counts(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    counts = np.asarray(counts, np.int64)
    if counts.size and counts.min() < 0 or counts.sum() != height * width:
        raise ValueError(f"RLE runs cover {int(counts.sum())} pixels, not {height}x{width}")
    flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8)
    return flat.reshape(width, height).T.copy()
