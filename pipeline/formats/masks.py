"""Image + mask folder pairs for semantic segmentation: images/ beside masks/ (or VOCdevkit's
JPEGImages/ beside SegmentationClass/), a mask per image with the same relative path and a
.png extension. A mask's pixels are class indices: a palette PNG gives its indices, never its
colours. Splits: a train/val/test folder in the path (images/train/a.jpg, masks/train/a.png).
"""
import logging
import os

from pipeline import formats, sources
from pipeline import targets as targets_mod

NAME = "masks"
PAIRS = (("images", "masks"), ("JPEGImages", "SegmentationClass"))

log = logging.getLogger("augbatch")


def _mask_of(path):
    """The mask path of an image path, or None if the image is in no images/ folder."""
    parts = path.split("/")
    for images, masks in PAIRS:
        if images in parts[:-1]:
            at = len(parts) - 1 - parts[::-1].index(images)
            return "/".join(parts[:at] + [masks] + parts[at + 1:-1]
                            + [os.path.splitext(parts[-1])[0] + ".png"])
    return None


def detect(found):
    files = formats.files_of(found)
    present = {f for f, _ in files}
    return any(formats.is_image(f) and _mask_of(f) in present for f, _ in files)


def discover(job, found):
    files = formats.files_of(found)
    present = {f for f, _ in files}
    mask_files = {_mask_of(f) for f, _ in files if formats.is_image(f)} - {None}
    refs, rejected = [], []
    for path, base in files:
        mask = _mask_of(path)
        if not formats.is_image(path) or path in mask_files or mask is None:
            continue
        ref = formats.Ref(formats.key_of(path, base), path, annotation=mask,
                          split=formats.split_of(formats.relative(path, base)))
        if mask in present:
            refs.append(ref)
        else:
            rejected.append((ref, "FileNotFoundError", "no mask for the image",
                             f"{sources.printable(path)} has no mask "
                             f"{sources.printable(mask)}"))
    inputs = {ref.path for ref in refs} | {ref.path for ref, *_ in rejected}
    unused = sorted(f for f, base in files if f.lower().endswith(".png") and f not in mask_files
                    and f not in inputs and any(masks in formats.relative(f, base).split("/")
                                                for _, masks in PAIRS))
    if unused:
        log.warning("%d mask%s no image (%s%s): left out", len(unused),
                    " has" if len(unused) == 1 else "s have", sources.printable(unused[0]),
                    " ..." if len(unused) > 1 else "")
    return formats.Listing(refs, {}, {targets_mod.CLASS_MASK}, rejected)


def read(ref, height, width):
    # The PNG is decoded (as indices) and checked against the image's size at the decode step.
    return targets_mod.Targets(boxes=targets_mod.np.zeros((0, 4)), objects={},
                               class_mask_png=sources.read_bytes(ref.annotation),
                               class_mask_file=sources.printable(ref.annotation),
                               has_boxes=False)
