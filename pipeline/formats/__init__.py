"""Labelled datasets as labelling tools export them: one module per format, one line each in
READERS. A format module has
  NAME       its --input-kind
  detect(found) -> bool       whether the listed files (sources._Found) look like this format
  discover(job, found) -> Listing   the images, each with what its targets are read from
  read(ref, height, width) -> Targets or None   (in a worker; raises AnnotationError)
Discovery (in the driver) lists images and parses what is small or needed to name the labels;
read() builds an image's targets once its size is known from its header, so an annotation
whose size disagrees with the image is that image's error record, never a silent rescale.
Class folders and TFRecords keep their readers in sources.py and transforms.py.
"""
import dataclasses
import os
import posixpath
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import sources
from pipeline import targets as targets_mod
from pipeline.formats import coco, manifest, masks, voc, yolo

# In the order auto-detection tries them (the first that recognises the files wins).
READERS = {module.NAME: module for module in (coco, voc, yolo, masks, manifest)}
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


@dataclasses.dataclass
class Ref:
    """One image of a labelled dataset, before it is read."""
    key: str
    path: str
    label: Optional[int] = None  # the image's class (manifest), None for detection formats
    label_text: Optional[str] = None
    annotation: object = None  # what the format's read() builds the targets from
    split: Optional[str] = None


@dataclasses.dataclass
class Listing:
    refs: list
    label_map: dict  # class name -> label
    kinds: set  # the kinds of target the images carry (targets.BOXES, ...)
    rejected: list = dataclasses.field(default_factory=list)  # (ref, type, reason, message)
    keypoints: int = 0  # keypoints per object, where the format says
    keypoint_flip: tuple = ()  # the dataset's own left/right pairs (YOLO's flip_idx ...)


class AnnotationError(targets_mod.TargetError):
    """An image whose annotation cannot be used (its error record says why)."""

    def __init__(self, message, reason="bad annotation"):
        super().__init__(message)
        self.reason = reason


def detect(found):
    """The format the listed files are in, or None (class folders or TFRecords)."""
    for name, module in READERS.items():
        if module.detect(found):
            return name
    return None


def discover(kind, job, found):
    listing = READERS[kind].discover(job, found)
    listing.refs.sort(key=lambda ref: ref.key)
    return listing


# --- shared by the format modules --------------------------------------------------------------

def files_of(found):
    """(path, base folder) of every listed file that is not hidden."""
    return [(f, item.base) for item in found for f, _ in item.visible]


def relative(path, base):
    return sources._relative(path, base)


def key_of(path, base):
    return sources.printable(relative(path, base))


def is_image(path):
    return path.lower().endswith(sources.IMAGE_EXTENSIONS)


def split_of(relative_path):
    """The split a path lies in (a folder named train, val, test ...), or None."""
    for part in relative_path.split("/")[:-1]:
        if part.lower() in SPLIT_NAMES:
            return part.lower()
    return None


def read_text(path):
    return sources.read_bytes(path).decode("utf-8-sig")


def head(path, size=1 << 16):
    """The first bytes of a file (b"" if it cannot be read): enough to recognise a format."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read(size)
    except Exception:  # noqa: BLE001 - unreadable: not this format
        return b""


def join(folder, name):
    return posixpath.join(folder, name) if "://" in folder else os.path.join(folder, name)


def exists(path):
    return os.path.exists(path) if sources.is_local(path) else FileSystems.exists(path)


def objects(labels, texts=None, **lists):
    """The per-object features: class label and text, and any other (name, kind) lists."""
    out = {targets_mod.CLASS_KEY: ("int64_list", [int(v) for v in labels])}
    if texts is not None:
        out[targets_mod.CLASS_TEXT_KEY] = ("bytes_list", [t.encode() for t in texts])
    for name, (kind, values) in lists.items():
        out[name] = (kind, list(values))
    return out


def size_differs(where, size, path, height, width):
    """The error of an annotation made for an image of another size (h, w) than the image's as
    decoded (turned upright by its EXIF orientation, as labelling tools show it)."""
    h, w = size
    turned = (" (the photo's EXIF orientation turns it upright; annotations drawn on its stored "
              "pixels need input.exif_orientation: false)" if (h, w) == (width, height) else "")
    return AnnotationError(f"{where} says the image is {w}x{h}, but {sources.printable(path)} is "
                           f"{width}x{height}: not rescaled{turned}",
                           reason="annotation size differs from the image")


def pixel_boxes(boxes, height, width, where="", names=None):
    """Pixel boxes [N, 4] (x0, y0, x1, y1) -> normalised [ymin, xmin, ymax, xmax], clipped.
    Exports round boxes past the frame by a little (up to 1% of the side here, as YOLO's
    normalised coordinates are read); a box farther out was drawn for another image or scale:
    AnnotationError, naming it (`names`: what each box is called, e.g. "annotation 7")."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    size = np.array([width, height], np.float64)
    slack = np.maximum(0.01 * size, 1.0)
    outside = ((boxes[:, :2] < -slack) | (boxes[:, 2:] > size + slack)).any(1)
    if outside.any():
        i = int(np.argmax(outside))
        name = names[i] if names else f"box {i + 1}"
        x0, y0, x1, y1 = boxes[i]
        raise AnnotationError(f"{where}: {name} is the box ({x0:g}, {y0:g}) - ({x1:g}, {y1:g}) "
                              f"pixels, beyond the {width}x{height} image",
                              reason="box outside the image")
    normalised = boxes[:, [1, 0, 3, 2]] / [height, width, height, width]
    return np.clip(normalised, 0.0, 1.0)


def polygon_mask(polygons, height, width):
    """uint8 [H, W]: the pixels whose centre lies inside any of the polygons (flat x0, y0, x1,
    y1 ... in continuous pixel coordinates; even-odd rule), so a polygon along pixel edges
    covers exactly the pixels it encloses."""
    centres = np.arange(height)[:, None] + 0.5
    rows, firsts, stops = [], [], []
    for polygon in polygons:
        points = np.asarray(polygon, np.float64).reshape(-1, 2)
        if len(points) < 3:
            continue
        (x0, y0), (x1, y1) = points.T, np.roll(points, -1, 0).T
        crossing = (y0 <= centres) != (y1 <= centres)  # [H, edges], each edge half-open
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = np.where(crossing, x0 + (centres - y0) * (x1 - x0) / (y1 - y0), np.inf)
        xs.sort(1)
        # Each row's crossings in pairs: the centres x + 0.5 in [left, right) are inside.
        pairs = xs.shape[1] // 2
        left, right = xs[:, 0:2 * pairs:2], xs[:, 1:2 * pairs:2]
        row, pair = np.nonzero(np.isfinite(left) & np.isfinite(right))
        rows.append(row)
        firsts.append(np.clip(np.ceil(left[row, pair] - 0.5), 0, width).astype(np.int64))
        stops.append(np.clip(np.ceil(right[row, pair] - 0.5), 0, width).astype(np.int64))
    if not rows:
        return np.zeros((height, width), np.uint8)
    # Spans filled through a running sum along each row: +1 where one starts, -1 after it.
    row, first, stop = (np.concatenate(parts) for parts in (rows, firsts, stops))
    starts = np.zeros((height, width + 1), np.int32)
    np.add.at(starts, (row, first), 1)
    np.add.at(starts, (row, stop), -1)
    return (np.cumsum(starts, axis=1, dtype=np.int32)[:, :width] > 0).view(np.uint8)


def box_mask(box, height, width):
    """A filled box (x0, y0, x1, y1 pixels): the mask of an object annotated by its box only."""
    x0, y0, x1, y1 = box
    return polygon_mask([[x0, y0, x1, y0, x1, y1, x0, y1]], height, width)


# --- reading, in the workers -------------------------------------------------------------------

class ReadAnnotated(beam.DoFn):
    """Ref of a labelled dataset's image -> Input with its label and targets, or an error
    record (a file that cannot be read, an annotation that cannot be used)."""

    def __init__(self, kind, max_bytes=None, exif_orientation=True):
        self.kind, self.max_bytes = kind, max_bytes
        self.exif_orientation = exif_orientation  # (input.exif_orientation)

    def process(self, ref):
        from pipeline import transforms as T
        data, failed = T.read_image_file(ref, self.max_bytes)
        if failed is not None:
            yield failed
            return
        found = None
        try:
            stored = T.header(data)
            width, height = stored.width, stored.height
            if self.exif_orientation and stored.orientation in (5, 6, 7, 8):
                # Annotations are drawn on the photo as shown, which decode turns it to.
                width, height = height, width
        except Exception:  # noqa: BLE001 - not an image: the decode step says why
            width = None
        if width is not None:
            try:
                found = READERS[self.kind].read(ref, height, width)
            except targets_mod.TargetError as e:
                yield T.error("read", e, ref.key, ref.path,
                              reason=getattr(e, "reason", "bad annotation"))
                return
            except Exception as e:  # noqa: BLE001 - an annotation file that cannot be read
                yield T.error("read", e, ref.key, ref.path, reason="bad annotation",
                              message=f"annotation of {sources.printable(ref.path)}: "
                                      f"{T.message_of(e)}")
                return
        yield T.Input(key=ref.key, source=ref.path, record_index=None, data=data,
                      label=ref.label, label_text=ref.label_text, targets=found,
                      split=ref.split)
