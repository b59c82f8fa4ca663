"""A realistic benchmark dataset derived from the bundled sample photos.

Each image is a mosaic of random crops of the real photos (resized, sometimes mirrored), so it
has photographic detail and JPEG sizes like real pictures, not noise. The same images are
written as a class folder and as TFRecord files of tf.train.Example; `detection` writes them
again as TF Object Detection API records with a few boxes each.
"""
import glob
import io
import os

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(ROOT, "sample_data", "images")
TILE = 128  # side of one mosaic tile: close to the sample photos' own size


def _photos():
    paths = sorted(glob.glob(os.path.join(SAMPLE_IMAGES, "*", "*")))
    return [(os.path.basename(os.path.dirname(p)), Image.open(p).convert("RGB")) for p in paths]


def _tile(photo, side, rng):
    """A random crop of `photo` (half to all of its shorter side), resized to side x side."""
    width, height = photo.size
    crop = int(min(width, height) * rng.uniform(0.5, 1.0))
    left, top = rng.integers(0, width - crop + 1), rng.integers(0, height - crop + 1)
    tile = photo.crop((left, top, left + crop, top + crop)).resize((side, side),
                                                                    Image.BILINEAR)
    return tile.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else tile


def make_image(label_photos, size, rng):
    """A size x size mosaic: tiles from photos of one class (so the label means something)."""
    per_side = max(1, size // TILE)
    side = size // per_side
    canvas = Image.new("RGB", (size, size))
    for row in range(per_side):
        for col in range(per_side):
            photo = label_photos[rng.integers(len(label_photos))]
            canvas.paste(_tile(photo, side, rng), (col * side, row * side))
    return canvas


def generate(out_dir, inputs, sizes=(256, 512), large_fraction=0.25, seed=0,
             records_per_file=500, quality=90):
    """Write `inputs` images to out_dir/images/<class>/ and out_dir/tfrecords/.

    A `large_fraction` of them have the largest size, the rest the smallest. Returns the
    folder path and the TFRecord glob. Does nothing if the dataset is already there.
    """
    folder = os.path.join(out_dir, "images")
    records = os.path.join(out_dir, "tfrecords")
    done = os.path.join(out_dir, "DONE")
    pattern = os.path.join(records, "*.tfrecord")
    if os.path.exists(done):
        return folder, pattern
    import tensorflow as tf
    photos = _photos()
    classes = sorted({c for c, _ in photos})
    by_class = {c: [p for k, p in photos if k == c] for c in classes}
    rng = np.random.default_rng(seed)
    num_files = max(1, -(-inputs // records_per_file))
    os.makedirs(records, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(
        records, f"data-{i:05d}-of-{num_files:05d}.tfrecord")) for i in range(num_files)]
    for index in range(inputs):
        label = index % len(classes)
        size = sizes[-1] if rng.random() < large_fraction else sizes[0]
        image = make_image(by_class[classes[label]], size, rng)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        data = buffer.getvalue()
        name = f"{classes[label]}/img_{index:06d}_{size}.jpg"
        os.makedirs(os.path.join(folder, classes[label]), exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        example = tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            "image/class/text": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[classes[label].encode()])),
            "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[name.encode()])),
        }))
        writers[index * num_files // inputs].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    open(done, "w").close()
    return folder, pattern


BOX_KEYS = ("image/object/bbox/ymin", "image/object/bbox/xmin", "image/object/bbox/ymax",
            "image/object/bbox/xmax")


def boxes(rng):
    """1 to 4 normalised boxes [ymin, xmin, ymax, xmax], sides 10% to 50% of the image's,
    anywhere in the frame (so a rotation clips some and pushes a few out)."""
    count = rng.integers(1, 5)
    sides = rng.uniform(0.1, 0.5, (count, 2))
    corners = rng.uniform(0.0, 1.0, (count, 2)) * (1.0 - sides)
    return np.concatenate([corners, corners + sides], 1)


def detection(folder, out_dir, seed=0, records_per_file=500):
    """The images of a class folder written by `generate` (the same bytes) as OD API
    tf.Examples in out_dir/*.tfrecord: boxes as `pipeline/targets.py` reads them, one object
    class (the image's class) per box. Returns the TFRecord glob; does nothing if it is there."""
    pattern = os.path.join(out_dir, "*.tfrecord")
    if os.path.exists(os.path.join(out_dir, "DONE")):
        return pattern
    import tensorflow as tf

    def feature(values):
        if isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if isinstance(values[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    classes = sorted(os.listdir(folder))
    paths = [(label, path) for label, name in enumerate(classes)
             for path in sorted(glob.glob(os.path.join(folder, name, "*")))]
    rng = np.random.default_rng(seed)
    num_files = max(1, -(-len(paths) // records_per_file))
    os.makedirs(out_dir, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(
        out_dir, f"boxes-{i:05d}-of-{num_files:05d}.tfrecord")) for i in range(num_files)]
    for index, (label, path) in enumerate(paths):
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        drawn = boxes(rng)
        example = {
            "image/encoded": [data], "image/format": [b"jpeg"], "image/height": [height],
            "image/width": [width], "image/source_id": [str(index).encode()],
            "image/filename": [os.path.relpath(path, folder).encode()],
            "image/object/class/label": [label + 1] * len(drawn),  # the OD API counts from 1
            "image/object/class/text": [classes[label].encode()] * len(drawn),
            **{key: [float(v) for v in column] for key, column in zip(BOX_KEYS, drawn.T)}}
        writers[index * num_files // len(paths)].write(tf.train.Example(
            features=tf.train.Features(feature={k: feature(v) for k, v in example.items()}))
            .SerializeToString())
    for writer in writers:
        writer.close()
    open(os.path.join(out_dir, "DONE"), "w").close()
    return pattern
