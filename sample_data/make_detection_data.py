"""Regenerate sample_data/detection/: four of the sample photos annotated by hand, as the TF
Object Detection API and DeepLab write them.

    python sample_data/make_detection_data.py

  detection/objects.tfrecord       OD API tf.Examples: boxes (normalised), class label and text,
                                   instance masks (PNG), image/source_id, image/key/sha256
  detection/segmentation.tfrecord  DeepLab tf.Examples: image/segmentation/class/encoded, a
                                   palette PNG of class indices (0 background)
  detection/label_map.pbtxt        the classes, OD API style

Each object's outline was drawn by eye on the photo: an ellipse or a polygon in pixels. Its
instance mask and its class-mask pixels are that outline filled; its box is the outline's box.
"""
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
OUT = HERE / "detection"
CLASSES = {1: "cat", 2: "eye", 3: "nose", 4: "cup", 5: "spoon", 6: "person", 7: "helmet",
           8: "shuttle", 9: "flag", 10: "rocket", 11: "tower"}

# photo -> [(class, "ellipse" | "polygon", points in pixels)]
ANNOTATIONS = {
    "portraits/chelsea_01.jpg": [
        (1, "polygon", [(0, 0), (132, 0), (136, 60), (118, 100), (0, 100)]),
        (2, "ellipse", [(45, 28), (70, 48)]),
        (2, "ellipse", [(96, 36), (117, 55)]),
        (3, "polygon", [(78, 73), (96, 73), (88, 88)]),
    ],
    "objects/coffee_01.jpg": [
        (4, "ellipse", [(18, 18), (119, 97)]),
        (5, "polygon", [(79, 62), (98, 59), (97, 81), (82, 81)]),
    ],
    "portraits/astronaut_01.jpg": [
        (6, "polygon", [(30, 4), (70, 4), (103, 60), (103, 144), (4, 144), (8, 70)]),
        (7, "ellipse", [(79, 95), (141, 150)]),
        (8, "polygon", [(112, 0), (120, 0), (131, 79), (99, 79)]),
        (9, "polygon", [(0, 0), (27, 0), (27, 134), (0, 134)]),
    ],
    "objects/rocket_01.jpg": [
        (10, "polygon", [(78, 32), (84, 32), (86, 103), (76, 103)]),
        (11, "polygon", [(1, 0), (26, 0), (26, 103), (1, 103)]),
        (11, "polygon", [(146, 0), (160, 0), (160, 103), (146, 103)]),
    ],
}


def outline_mask(kind, points, size):
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    (draw.ellipse if kind == "ellipse" else draw.polygon)(points, fill=1)
    return np.asarray(mask)


def png(array, palette=False):
    image = Image.fromarray(array.astype(np.uint8), mode="L")
    if palette:  # as DeepLab's datasets store class masks: the index is the class
        image = image.convert("P")
        colours = [0, 0, 0] + [(37 * i) % 256 for c in range(1, 256) for i in (c, c + 3, c + 7)]
        image.putpalette(colours[:768])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def feature(values):
    import tensorflow as tf
    if not isinstance(values, (list, tuple)):
        values = [values]
    if values and isinstance(values[0], bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if values and isinstance(values[0], float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def examples():
    import tensorflow as tf
    for source_id, (name, objects) in enumerate(sorted(ANNOTATIONS.items()), start=1):
        data = (HERE / "images" / name).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            fmt = image.format.lower().encode()
        masks = [outline_mask(kind, points, (width, height)) for _, kind, points in objects]
        boxes = []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            boxes.append((ys.min() / height, xs.min() / width, (ys.max() + 1) / height,
                          (xs.max() + 1) / width))
        classes = np.zeros((height, width), np.uint8)
        for (label, _, _), mask in zip(objects, masks):  # later outlines lie on top
            classes[mask > 0] = label
        common = {"image/encoded": feature(data), "image/format": feature(fmt),
                  "image/height": feature(height), "image/width": feature(width),
                  "image/filename": feature(name.encode()),
                  "image/source_id": feature(str(source_id).encode()),
                  "image/key/sha256": feature(hashlib.sha256(data).hexdigest().encode())}
        detection = dict(common, **{
            f"image/object/bbox/{key}": feature([float(b[i]) for b in boxes])
            for i, key in enumerate(("ymin", "xmin", "ymax", "xmax"))})
        detection.update({
            "image/object/class/label": feature([label for label, _, _ in objects]),
            "image/object/class/text": feature([CLASSES[label].encode()
                                                for label, _, _ in objects]),
            "image/object/mask": feature([png(mask) for mask in masks])})
        segmentation = dict(common, **{
            "image/segmentation/class/encoded": feature(png(classes, palette=True)),
            "image/segmentation/class/format": feature(b"png")})
        yield (tf.train.Example(features=tf.train.Features(feature=detection)),
               tf.train.Example(features=tf.train.Features(feature=segmentation)))


def main():
    import tensorflow as tf
    OUT.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(OUT / "objects.tfrecord")) as objects, \
            tf.io.TFRecordWriter(str(OUT / "segmentation.tfrecord")) as segmentation:
        for detection, classes in examples():
            objects.write(detection.SerializeToString(deterministic=True))
            segmentation.write(classes.SerializeToString(deterministic=True))
    (OUT / "label_map.pbtxt").write_text("".join(
        f"item {{\n  id: {i}\n  name: '{name}'\n}}\n" for i, name in CLASSES.items()))


if __name__ == "__main__":
    main()
