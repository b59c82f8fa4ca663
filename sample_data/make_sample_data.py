"""Regenerate sample_data/images/ and sample_data/tfrecords/ from scikit-image's bundled photos.

Usage:
    pip download --no-deps scikit-image==0.22.0 -d /tmp/skimg
    unzip -q /tmp/skimg/scikit_image-0.22.0-*.whl 'skimage/data/*' -d /tmp/skimg
    python sample_data/make_sample_data.py /tmp/skimg/skimage/data

Only public-domain / CC0 photos are used (see README.md). All crops use fixed
coordinates, so the output is reproducible.
"""
import shutil
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
TFRECORDS = HERE / "tfrecords"
NUM_SHARDS = 2

# class -> source file -> list of (crop box (left, top, right, bottom), output (width, height), format)
# Crop boxes have the same aspect ratio as their output size, so nothing is stretched.
CROPS = {
    "portraits": {
        "astronaut.png": [
            ((0, 0, 512, 512), (144, 144), "jpg"),
            ((136, 0, 328, 192), (128, 128), "jpg"),
            ((352, 0, 512, 240), (96, 144), "jpg"),
            ((160, 256, 448, 496), (96, 80), "png"),
        ],
        "camera.png": [  # grayscale source -> RGB
            ((0, 0, 512, 512), (128, 128), "jpg"),
            ((160, 40, 400, 280), (120, 120), "jpg"),
            ((0, 96, 512, 480), (160, 120), "jpg"),
            ((224, 256, 416, 512), (96, 128), "jpg"),
        ],
        "chelsea.png": [
            ((0, 0, 450, 300), (150, 100), "jpg"),
            ((100, 0, 400, 300), (128, 128), "jpg"),
            ((120, 40, 360, 160), (160, 80), "jpg"),
            ((200, 100, 360, 260), (96, 96), "jpg"),
        ],
    },
    "objects": {
        "coffee.png": [
            ((0, 0, 600, 400), (150, 100), "jpg"),
            ((220, 0, 500, 280), (112, 112), "jpg"),
            ((300, 150, 600, 400), (120, 100), "jpg"),
            ((0, 220, 216, 400), (96, 80), "png"),
        ],
        "clock_motion.png": [  # grayscale source -> RGB
            ((0, 0, 400, 300), (160, 120), "jpg"),
            ((120, 60, 300, 240), (120, 120), "jpg"),
            ((100, 60, 340, 240), (128, 96), "jpg"),
            ((140, 30, 290, 230), (96, 128), "jpg"),
        ],
        "rocket.jpg": [
            ((0, 0, 640, 427), (160, 107), "jpg"),
            ((224, 60, 440, 420), (96, 160), "jpg"),
            ((160, 247, 480, 427), (160, 90), "jpg"),
            ((0, 0, 240, 320), (96, 128), "jpg"),
        ],
    },
    "textures": {  # all grayscale sources -> RGB
        name: [
            ((0, 0, 512, 512), (128, 128), "jpg"),
            ((0, 0, 256, 256), (96, 96), "jpg"),
            ((128, 192, 512, 480), (160, 120), "jpg"),
            ((256, 0, 448, 256), (96, 128), fmt),
        ]
        for name, fmt in [("brick.png", "jpg"), ("grass.png", "png"), ("gravel.png", "jpg")]
    },
}


def make_images(data_dir: Path) -> None:
    shutil.rmtree(IMAGES, ignore_errors=True)
    for cls, sources in CROPS.items():
        (IMAGES / cls).mkdir(parents=True)
        for src_name, crops in sources.items():
            src = Image.open(data_dir / src_name).convert("RGB")
            for i, (box, size, fmt) in enumerate(crops, start=1):
                out = src.crop(box).resize(size, Image.Resampling.LANCZOS)
                path = IMAGES / cls / f"{Path(src_name).stem}_{i:02d}.{fmt}"
                if fmt == "jpg":
                    out.save(path, "JPEG", quality=85, optimize=True)
                else:
                    out.save(path, "PNG", optimize=True)


def make_tfrecords() -> None:
    import tensorflow as tf

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    classes = sorted(p.name for p in IMAGES.iterdir() if p.is_dir())
    paths = sorted(p.relative_to(IMAGES).as_posix() for p in IMAGES.glob("*/*") if p.is_file())
    shutil.rmtree(TFRECORDS, ignore_errors=True)
    TFRECORDS.mkdir()
    writers = [
        tf.io.TFRecordWriter(str(TFRECORDS / f"sample-{i:05d}-of-{NUM_SHARDS:05d}.tfrecord"))
        for i in range(NUM_SHARDS)
    ]
    for n, rel in enumerate(paths):
        cls = rel.split("/")[0]
        example = tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": feature((IMAGES / rel).read_bytes()),
            "image/class/label": feature(classes.index(cls)),
            "image/class/text": feature(cls.encode()),
            "image/filename": feature(rel.encode()),
        }))
        writers[n % NUM_SHARDS].write(example.SerializeToString())
    for w in writers:
        w.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    make_images(Path(sys.argv[1]))
    make_tfrecords()
