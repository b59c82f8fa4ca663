"""YOLO (Ultralytics / Darknet) text labels: detect, segment and pose.

images/ and labels/ side by side (images/train/a.jpg -> labels/train/a.txt, or
train/images/a.jpg -> train/labels/a.txt): one line per object, `class cx cy w h` normalised
(detect), `class x1 y1 x2 y2 ...` a polygon (segment), `class cx cy w h` + K keypoints of 2 or
3 values (pose, when data.yaml has kpt_shape; its flip_idx, the keypoints' left/right pairs,
is the default targets.keypoint_flip). A missing or empty label file: no objects.
Class names from data.yaml `names` (a list or a mapping id: name), else from a classes.txt or
obj.names (one name a line, as LabelImg and Darknet write them); the label is the class id, and
a class id without a name is that image's error record.
Splits: the folders data.yaml names as train/val/test, else a train/val/test folder in the path.
"""
import logging
import os
import posixpath

import numpy as np
import yaml

from pipeline import formats, sources
from pipeline import targets as targets_mod
from pipeline.errors import UserError

NAME = "yolo"
PEEK_FILES = 16  # label files read at discovery to tell detect from segment
NAMES_FILES = ("classes.txt", "obj.names")  # class names without a data.yaml

log = logging.getLogger("augbatch")


def label_path(image_path):
    """Ultralytics' rule: the last /images/ of the path becomes /labels/, the extension .txt."""
    head, _, tail = image_path.rpartition("/images/")
    return posixpath.splitext(f"{head}/labels/{tail}")[0] + ".txt"


def _yamls(found):
    return [(f, base) for f, base in formats.files_of(found)
            if f.lower().endswith((".yaml", ".yml"))]


def detect(found):
    files = formats.files_of(found)
    images = [f for f, _ in files if formats.is_image(f) and "/images/" in f]
    labels = {f for f, _ in files if f.endswith(".txt") and "/labels/" in f}
    return bool(images) and (bool(labels & {label_path(f) for f in images})
                             or any(_names(f) is not None for f, _ in _yamls(found)))


def _data_yaml(path):
    try:
        data = yaml.safe_load(formats.read_text(path))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _names(path):
    data = _data_yaml(path)
    names = data.get("names") if data else None
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        return {int(i): str(n) for i, n in names.items()}
    return None


def _names_file(files):
    """{id: name} from a classes.txt or obj.names (the first, by path), or {}."""
    for path in sorted(f for f, _ in files if posixpath.basename(f) in NAMES_FILES):
        lines = [line.strip() for line in formats.read_text(path).splitlines()]
        return {i: name for i, name in enumerate(lines) if name}
    return {}


def _flip_idx(value, path, k):
    """data.yaml's flip_idx (slot i of a mirrored object takes keypoint flip_idx[i]), or ()."""
    if value is None or not k:
        return ()
    if (not isinstance(value, list) or sorted(value) != list(range(k))
            or any(isinstance(v, bool) for v in value)):
        raise UserError(f"{path}: flip_idx {value!r} is not an order of the {k} keypoints "
                        "(kpt_shape)", hint="list each keypoint's mirror image, e.g. [0, 2, 1] "
                        "for a nose and two eyes")
    return tuple(value)


def discover(job, found):
    files = formats.files_of(found)
    names, kpt_shape, split_dirs, flip_idx = {}, None, [], (None, "")
    for path, _ in _yamls(found):
        data = _data_yaml(path)
        if not data or _names(path) is None:
            continue
        names = _names(path)
        kpt_shape = data.get("kpt_shape")
        flip_idx = (data.get("flip_idx"), path)
        root = os.path.join(os.path.dirname(path), str(data.get("path") or ""))
        for split in ("train", "val", "test"):
            entry = data.get(split)
            for folder in ([entry] if isinstance(entry, str) else entry or []):
                split_dirs.append((os.path.normpath(os.path.join(root, folder)), split))
    if kpt_shape is not None and (not isinstance(kpt_shape, list) or len(kpt_shape) != 2
                                  or kpt_shape[1] not in (2, 3)):
        raise UserError(f"data.yaml kpt_shape is {kpt_shape!r}: expected [keypoints, 2 or 3]")
    keypoint_flip = _flip_idx(*flip_idx, (kpt_shape or [0])[0])
    if not names:
        names = _names_file(files)
    if not names:
        log.warning("no class names for the YOLO labels (data.yaml names, %s): the records "
                    "hold class ids only", " or ".join(NAMES_FILES))
    images = [(f, base) for f, base in files if formats.is_image(f)]
    present = {f for f, _ in files}
    mode = "pose" if kpt_shape else "detect"
    if mode == "detect":
        peeked = [label_path(f) for f, _ in images if label_path(f) in present][:PEEK_FILES]
        if any(len(line.split()) > 5 for p in peeked for line in formats.read_text(p)
               .splitlines()):
            mode = "segment"
    kinds = {targets_mod.BOXES} | ({targets_mod.MASKS} if mode == "segment" else set()) | (
        {targets_mod.KEYPOINTS} if mode == "pose" else set())
    refs = []
    for path, base in images:
        split = next((s for folder, s in split_dirs
                      if os.path.normpath(path).startswith(folder + os.sep)), None)
        refs.append(formats.Ref(
            formats.key_of(path, base), path,
            split=split or formats.split_of(formats.relative(path, base)),
            annotation={"labels": label_path(path), "present": label_path(path) in present,
                        "mode": mode, "kpt_shape": kpt_shape, "names": names}))
    labels = {label_path(f) for f, _ in images}
    _warn_unused([f for f, _ in files if f.endswith(".txt") and "/labels/" in f
                  and f not in labels and posixpath.basename(f) not in NAMES_FILES])
    label_map = {name: i for i, name in names.items()}
    return formats.Listing(refs, label_map, kinds, keypoints=(kpt_shape or [0])[0],
                           keypoint_flip=keypoint_flip)


def read(ref, height, width):
    info = ref.annotation
    source = info["labels"]
    text = formats.read_text(source) if info["present"] else ""
    boxes, classes, polygons, points, visibility, lines = [], [], [], [], [], []
    k, dims = info["kpt_shape"] or (0, 0)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{sources.printable(source)} line {number}"
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise formats.AnnotationError(f"{where}: not numbers: {line.strip()[:80]!r}") \
                from None
        cls, rest = values[0], np.array(values[1:])
        if cls != int(cls) or cls < 0:
            raise formats.AnnotationError(f"{where}: class {values[0]} is not a class id")
        if info["names"] and int(cls) not in info["names"]:
            raise formats.AnnotationError(f"{where}: class {int(cls)} has no name (the names "
                                          f"are of classes {_ranges(info['names'])})")
        coords = rest if info["mode"] != "pose" or dims == 2 else np.delete(
            rest, np.arange(6, len(rest), 3))  # (not the visibility flags)
        if not np.all(np.isfinite(rest)) or coords.min(initial=0) < -0.01 or \
                coords.max(initial=0) > 1.01:
            raise formats.AnnotationError(f"{where}: coordinates must be normalised to [0, 1]")
        if info["mode"] == "pose":
            if len(rest) != 4 + k * dims:
                raise formats.AnnotationError(f"{where}: {len(rest)} values after the class, "
                                              f"not 4 + {k} keypoints x {dims}")
            kp = rest[4:].reshape(k, dims)
            shown = (kp[:, 2] if dims == 3 else np.where(kp.any(1), 2, 0)).astype(np.int64)
            points.append(np.where(shown[:, None] > 0, kp[:, [1, 0]], np.nan))
            visibility.append(shown)
        if len(rest) == 4 or info["mode"] == "pose":
            cx, cy, w, h = rest[:4] * [width, height, width, height]
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            polygon = [box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3]]
        elif len(rest) >= 6 and len(rest) % 2 == 0:
            polygon = (rest.reshape(-1, 2) * [width, height]).ravel()
            box = (*polygon.reshape(-1, 2).min(0), *polygon.reshape(-1, 2).max(0))
        else:
            raise formats.AnnotationError(f"{where}: {len(rest)} values after the class: "
                                          "expected cx cy w h, or a polygon of x y pairs")
        boxes.append(box)
        lines.append(number)
        classes.append(int(cls))
        polygons.append(polygon)
    names = info["names"]
    found = targets_mod.Targets(
        boxes=formats.pixel_boxes(boxes, height, width, sources.printable(source),
                                  [f"line {n}" for n in lines]),
        objects=formats.objects(classes, [names.get(c, str(c)) for c in classes]
                                if names else None))
    if info["mode"] == "segment":
        found.masks = (np.stack([formats.polygon_mask([p], height, width) for p in polygons])
                       if polygons else np.zeros((0, height, width), np.uint8))
    if info["mode"] == "pose":
        found.keypoints = np.array(points, np.float64).reshape(-1, k, 2)
        found.visibility = np.array(visibility, np.int64).reshape(-1, k)
    return found


def _warn_unused(label_files):
    if label_files:
        log.warning("%d YOLO label file%s no image (%s%s): left out", len(label_files),
                    " has" if len(label_files) == 1 else "s have",
                    sources.printable(sorted(label_files)[0]),
                    " ..." if len(label_files) > 1 else "")


def _ranges(ids):
    """'0-3, 5' for the ids 0, 1, 2, 3 and 5."""
    ids, parts = sorted(ids), []
    for i in ids:
        if parts and i == parts[-1][1] + 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in parts)
