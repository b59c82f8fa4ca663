"""Pascal VOC XML: one <annotation> per image (VOCdevkit's Annotations/ beside JPEGImages/,
or an XML beside its image as LabelImg writes it).

Boxes are 1-based inclusive pixel coordinates: xmin..xmax covers pixels xmin-1 .. xmax-1, so
the continuous box is [xmin - 1, xmax). difficult, truncated and pose become the OD API's
image/object/difficult, image/object/truncated and image/object/view. Labels: the config's
input.labels, else the sorted class names numbered from 1 (0 is the OD API's background).
Splits: VOCdevkit's ImageSets/Main/<split>.txt lists, else a train/val/test folder.
An XML that cannot be used (not valid XML, an object without a numeric bndbox) is its image's
error record, found at discovery; the class names it has still count for the label map.
In VOCdevkit's JPEGImages/ every image has its Annotations/ XML (one without objects too): an
image without it is an error record ("no annotation"), not background. Elsewhere (LabelImg's
layout) an image without an XML of its own has no objects, in the split found as for any other.
"""
import os
import posixpath
import xml.etree.ElementTree as ElementTree

from pipeline import formats, sources
from pipeline import targets as targets_mod
from pipeline.errors import UserError

NAME = "voc"


def _is_voc(path):
    return path.lower().endswith(".xml") and b"<annotation" in formats.head(path, 4096)


def detect(found):
    return any(_is_voc(f) for f, _ in formats.files_of(found))


def _text(node, tag, default=None):
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else default


def _parse(path):
    """An XML's annotation. One that cannot be used has an "error" (that image's error record,
    the run goes on) and keeps the class names it has, for the label map."""
    annotation = {"file": path, "filename": "", "size": (0, 0), "objects": [], "names": [],
                  "error": None}
    try:
        root = ElementTree.fromstring(sources.read_bytes(path))
    except ElementTree.ParseError as e:
        annotation["error"] = f"not valid XML: {e}"
        return annotation
    annotation["filename"] = _text(root, "filename", "")
    annotation["names"] = [name for obj in root.findall("object")
                           if (name := _text(obj, "name", ""))]
    try:
        annotation["size"] = _size(root.find("size"))
        annotation["objects"] = [_object(obj) for obj in root.findall("object")]
    except ValueError as e:
        annotation["error"] = str(e)
    return annotation


def _number(node, tag, default, what):
    try:
        return int(float(_text(node, tag, default)))
    except (ValueError, OverflowError):
        raise ValueError(f"{what} has a {tag} that is not a number") from None


def _size(size):
    if size is None:
        return 0, 0
    return _number(size, "height", 0, "size"), _number(size, "width", 0, "size")


def _object(obj):
    name = _text(obj, "name", "")
    if not name:  # (it would be a class named "" in the label map)
        raise ValueError("an object has no <name>")
    try:
        box = [float(_text(obj.find("bndbox"), tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"object {name!r} has no numeric bndbox xmin, ymin, xmax, ymax") \
            from None
    what = f"object {name!r}"
    return {"name": name, "box": box, "difficult": _number(obj, "difficult", 0, what),
            "truncated": _number(obj, "truncated", 0, what),
            "pose": _text(obj, "pose", "Unspecified")}


def _split_lists(files):
    """image id -> split, from VOCdevkit's ImageSets/Main/{train,val,test}.txt."""
    splits = {}
    for path, _ in files:
        parts = path.replace(os.sep, "/").split("/")
        if len(parts) >= 3 and parts[-3:-1] == ["ImageSets", "Main"] and \
                parts[-1] in ("train.txt", "val.txt", "test.txt"):
            for line in formats.read_text(path).splitlines():
                if line.strip():
                    splits[line.split()[0]] = parts[-1][:-4]
    return splits


def discover(job, found):
    files = formats.files_of(found)
    annotations = [_parse(f) for f, _ in files if _is_voc(f)]
    images = {os.path.normpath(f): base for f, base in files if formats.is_image(f)}
    by_name = {}
    for path in images:
        by_name.setdefault(os.path.basename(path), []).append(path)
    names = sorted({name for a in annotations for name in a["names"]})
    if job.label_map:
        label_map = dict(job.label_map)
        unknown = [n for n in names if n not in label_map]
        if unknown:
            raise UserError(f"VOC class{'es' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown[:10]))} not in the config's "
                            "input.labels", hint="add them to input.labels")
    else:
        label_map = {name: i for i, name in enumerate(names, start=1)}
    splits = _split_lists(files)
    refs, rejected, used = [], [], set()
    for annotation in annotations:
        xml = annotation["file"]
        here = os.path.dirname(xml)
        filename = annotation["filename"] or posixpath.basename(xml)[:-4] + ".jpg"
        stem = os.path.splitext(os.path.basename(xml))[0]
        candidates = [os.path.normpath(os.path.join(os.path.dirname(here), "JPEGImages",
                                                    filename)),
                      os.path.normpath(os.path.join(here, filename))]
        image = next((c for c in candidates if c in images), None)
        if image is None:  # by name anywhere, then by the XML's own stem
            same = by_name.get(os.path.basename(filename)) or [
                p for p in images if os.path.splitext(os.path.basename(p))[0] == stem]
            image = same[0] if len(same) == 1 else None
        if annotation["error"]:  # that image's error record (the XML's if no image is found)
            ref = (formats.Ref(formats.key_of(image, images[image]), image) if image else
                   formats.Ref(formats.key_of(xml, _base(files, xml)), xml))
            rejected.append((ref, "ValueError", "bad annotation",
                             f"{sources.printable(xml)}: {annotation['error']}"))
            used.add(image)
            continue
        if image is None:
            rejected.append((formats.Ref(formats.key_of(xml, _base(files, xml)), xml),
                             "ValueError", "image of the annotation not found",
                             f"{sources.printable(xml)} annotates {filename!r}, found neither "
                             "in ../JPEGImages/ nor beside the XML"))
            continue
        used.add(image)
        for obj in annotation["objects"]:
            obj["label"] = label_map[obj["name"]]
        refs.append(formats.Ref(formats.key_of(image, images[image]), image,
                                annotation=annotation, split=_split(image, images, splits)))
    for image, base in images.items():
        if image in used:
            continue
        ref = formats.Ref(formats.key_of(image, base), image, split=_split(image, images, splits),
                          annotation={"file": None, "size": (0, 0), "objects": []})
        if os.path.basename(os.path.dirname(image)) != "JPEGImages":  # LabelImg: no objects
            refs.append(ref)
            continue
        # VOCdevkit writes an XML for every image, even one without objects: its absence is
        # an error, not background.
        xml = os.path.join(os.path.dirname(os.path.dirname(image)), "Annotations",
                           os.path.splitext(os.path.basename(image))[0] + ".xml")
        rejected.append((ref, "FileNotFoundError", "no annotation",
                         f"{sources.printable(image)} has no annotation: "
                         f"{sources.printable(xml)} is missing"))
    return formats.Listing(refs, label_map, {targets_mod.BOXES}, rejected)


def _split(image, images, splits):
    """The split ImageSets/Main's lists put the image in, else its split folder's."""
    image_id = os.path.splitext(os.path.basename(image))[0]
    return splits.get(image_id) or formats.split_of(formats.relative(image, images[image]))


def _base(files, path):
    return next(base for f, base in files if f == path)


def read(ref, height, width):
    info = ref.annotation
    h, w = info["size"]
    if h and w and (h, w) != (height, width):  # (LabelImg writes 0 when it did not know)
        raise formats.size_differs(info["file"], (h, w), ref.path, height, width)
    objs = info["objects"]
    for obj in objs:
        x0, y0, x1, y1 = obj["box"]
        if x1 < x0 or y1 < y0:
            raise formats.AnnotationError(f"{info['file']}: object {obj['name']!r} has "
                                          f"bndbox {obj['box']} with max < min")
    return targets_mod.Targets(
        boxes=formats.pixel_boxes([(x0 - 1, y0 - 1, x1, y1) for x0, y0, x1, y1
                                   in (o["box"] for o in objs)], height, width, info["file"],
                                  [f"object {o['name']!r}" for o in objs]),
        objects=formats.objects([o["label"] for o in objs], [o["name"] for o in objs], **{
            "image/object/difficult": ("int64_list", [o["difficult"] for o in objs]),
            "image/object/truncated": ("int64_list", [o["truncated"] for o in objs]),
            "image/object/view": ("bytes_list", [o["pose"].encode() for o in objs])}))
