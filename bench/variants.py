"""The benchmark's contenders. Each runs in its own process (`python -m bench.variants`) so its
peak memory is its own, and prints one JSON line: outputs, wall and CPU seconds, peak RSS.

  F0        decode + re-encode only, in tf.data: the floor no augmenter can beat
  B1        the chain written plainly in tf.data (map with AUTOTUNE -> TFRecordWriter)
  B2        Keras ImageDataGenerator with the equivalent parameters, one image at a time
  augbatch  pipeline.run.run_expand (Beam), the thing being measured
  P0        OpenCV decode + re-encode only in a 2-process pool: the peer's floor
  P1        the peer a CPU user would pick: albumentations (OpenCV) in a 2-process pool
            (--tf-arithmetic: its brightness and contrast computed as tf.image does)
  P1-boxes  P1 on OD API TFRecords: boxes carried (BboxParams), the same records written

Every contender reads the same inputs, writes `copies` augmented JPEGs (quality 95) per input
as tf.train.Example records, and is timed after a warm-up run on a few other images (imports
done, TensorFlow started, files in the page cache).
"""
import argparse
import atexit
import contextlib
import glob
import io
import json
import math
import os
import resource
import shutil
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

QUALITY = 95
BRIGHTNESS, CONTRAST, DEGREES = 0.2, (0.7, 1.3), 20.0

# The chains, in augbatch's config form. "standard" ends with tfa.image.rotate (bilinear).
COLOUR_CHAIN = [
    {"op": "tf.image.random_flip_left_right"},
    {"op": "tf.image.random_brightness", "max_delta": BRIGHTNESS},
    {"op": "tf.image.random_contrast", "lower": CONTRAST[0], "upper": CONTRAST[1]},
]
STANDARD_CHAIN = COLOUR_CHAIN + [
    {"op": "tfa.image.rotate", "max_degrees": DEGREES, "interpolation": "bilinear"}]
# The same chains with albumentations' arithmetic for brightness and contrast (x * alpha +
# beta, no mean; the same draws' ranges as P1's RandomBrightnessContrast), on uint8 pixels.
UINT8_COLOUR_CHAIN = [
    COLOUR_CHAIN[0],
    {"op": "uint8.random_brightness_contrast", "contrast": list(CONTRAST),
     "brightness": [-BRIGHTNESS, BRIGHTNESS]},
]
UINT8_STANDARD_CHAIN = UINT8_COLOUR_CHAIN + STANDARD_CHAIN[3:]
CHAINS = {"standard": STANDARD_CHAIN, "colour": COLOUR_CHAIN,
          "standard-uint8": UINT8_STANDARD_CHAIN, "colour-uint8": UINT8_COLOUR_CHAIN}


def list_inputs(folder):
    """[(path, label)] of a class folder, sorted (the class index is the label)."""
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    return [(path, label) for label, name in enumerate(classes)
            for path in sorted(glob.glob(os.path.join(folder, name, "*")))]


# --- tf.data: F0 and B1 -------------------------------------------------------------------------

def _example(encoded, label):
    import tensorflow as tf
    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def _plain_chain(name):
    """The chain written the way one would by hand: per image, tf.image + tfa.image.rotate."""
    import tensorflow as tf
    try:
        from tensorflow_addons.image import rotate  # the baseline is the plain tfa call
    except ImportError:  # TF >= 2.16, where tfa cannot install: the same function on core TF
        from pipeline.ops.tfa_core import rotate

    def augment(image, seed):
        x = tf.image.convert_image_dtype(image, tf.float32)
        seeds = tf.random.experimental.stateless_split(seed, 4)
        x = tf.image.stateless_random_flip_left_right(x, seeds[0])
        x = tf.image.stateless_random_brightness(x, BRIGHTNESS, seeds[1])
        x = tf.image.stateless_random_contrast(x, CONTRAST[0], CONTRAST[1], seeds[2])
        if name == "standard":
            angle = tf.random.stateless_uniform([], seeds[3], -math.radians(DEGREES),
                                                math.radians(DEGREES))
            x = rotate(x, angle, interpolation="bilinear")
        return tf.image.convert_image_dtype(tf.clip_by_value(x, 0.0, 1.0), tf.uint8,
                                            saturate=True)
    return augment


def run_tf_data(folder, out_dir, copies, chain):
    """F0 (chain None) or B1: list -> read -> decode -> copies -> augment -> encode -> write."""
    import tensorflow as tf
    autotune = tf.data.AUTOTUNE
    inputs = list_inputs(folder)
    augment = _plain_chain(chain) if chain else None

    def decode(index, path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return index, image, label

    def copy(index, image, label):
        return tf.data.Dataset.range(1, copies + 1).map(
            lambda c: (tf.stack([tf.cast(index, tf.int32), tf.cast(c, tf.int32)]), image,
                       label))

    def encode(seed, image, label):
        if augment is not None:
            image = augment(image, seed)
        return tf.io.encode_jpeg(image, quality=QUALITY), label

    dataset = (tf.data.Dataset.from_tensor_slices(
        (tf.range(len(inputs)), [p for p, _ in inputs], [label for _, label in inputs]))
        .map(decode, num_parallel_calls=autotune)
        .flat_map(copy)
        .map(encode, num_parallel_calls=autotune)
        .prefetch(autotune))
    count = 0
    with tf.io.TFRecordWriter(os.path.join(out_dir, "out.tfrecord")) as writer:
        for encoded, label in dataset.as_numpy_iterator():
            writer.write(_example(encoded, int(label)))
            count += 1
    return count


# --- B2: Keras ImageDataGenerator ---------------------------------------------------------------

def run_idg(folder, out_dir, copies, chain):
    """What ImageDataGenerator.flow(save_to_dir=...) does per image (random_transform, then
    array_to_img + save), without stacking the whole dataset into one array first."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    rng = np.random.default_rng(0)

    def contrast(x):  # IDG has no contrast option: its preprocessing_function hook
        mean = x.mean(axis=(0, 1), keepdims=True)
        return np.clip((x - mean) * rng.uniform(*CONTRAST) + mean, 0, 255)

    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        horizontal_flip=True, brightness_range=(1 - BRIGHTNESS, 1 + BRIGHTNESS),
        rotation_range=DEGREES if chain == "standard" else 0, fill_mode="constant", cval=0,
        preprocessing_function=contrast)
    count = 0
    with tf.io.TFRecordWriter(os.path.join(out_dir, "out.tfrecord")) as writer:
        for path, label in list_inputs(folder):
            x = np.asarray(Image.open(path).convert("RGB"), np.float32)
            for _ in range(copies):
                y = generator.standardize(generator.random_transform(x))
                buffer = io.BytesIO()
                Image.fromarray(y.astype(np.uint8)).save(buffer, "JPEG", quality=QUALITY)
                writer.write(_example(buffer.getvalue(), label))
                count += 1
    return count


# --- P0 and P1: OpenCV and albumentations in a process pool ------------------------------------
# Written as an albumentations user would: a Pool of 2 processes over the files, each decoding
# with OpenCV, augmenting and encoding the copies; the parent writes the TFRecords.

POOL_PROCESSES = 2
_pool_state = {}


def _albumentations_chain(name, boxes=False, tf_arithmetic=False):
    """The benchmark's chain in albumentations: flip, brightness and contrast (one transform
    there, `x * alpha + beta`: its contrast takes no mean, where tf.image's moves each channel
    around its own), then for "standard" a bilinear rotation with a constant (black) fill.
    With `boxes` the boxes follow (normalised x, y as the OD API stores them; `index` says
    which objects are left). BboxParams' defaults are augbatch's default target rules: a
    moved box is the enclosing box of its corners, clipped to the frame, dropped only once
    wholly outside (min_visibility 0, no minimum area or side). `tf_arithmetic`: brightness
    and contrast as tf.image computes them instead (_tf_brightness_contrast)."""
    import albumentations as A
    import cv2
    colour = (A.Lambda(image=_tf_brightness_contrast, p=1.0) if tf_arithmetic
              else A.RandomBrightnessContrast(brightness_limit=BRIGHTNESS,
                                              contrast_limit=CONTRAST[1] - 1.0, p=1.0))
    steps = [A.HorizontalFlip(p=0.5), colour]
    if name == "standard":
        steps.append(A.Rotate(limit=DEGREES, interpolation=cv2.INTER_LINEAR,
                              border_mode=cv2.BORDER_CONSTANT, p=1.0))
    bbox_params = A.BboxParams(format="albumentations", label_fields=["index"]) if boxes \
        else None
    return A.Compose(steps, bbox_params=bbox_params)


def _tf_brightness_contrast(image, **_):
    """tf.image.random_brightness then random_contrast as tf.image computes them (float32, the
    contrast around each channel's own mean, no clip between the two; stored as augbatch
    stores float pixels), written as an OpenCV user would: the channels' means, then one
    lookup table per channel for both ops. What albumentations costs doing augbatch's
    arithmetic (rows "P1 tf arithmetic")."""
    import cv2
    import numpy as np
    rng = _pool_state["rng"]
    delta = np.float32(rng.uniform(-BRIGHTNESS, BRIGHTNESS))
    factor = np.float32(rng.uniform(*CONTRAST))
    values = np.arange(256, dtype=np.float32) * np.float32(1 / 255) + delta
    means = (np.array(cv2.mean(image)[:3]) / 255 + delta).astype(np.float32)
    table = (values[:, None] - means) * factor + means
    table = (np.clip(table, 0.0, 1.0) * np.float32(255.5)).astype(np.uint8)
    return cv2.LUT(image, table.reshape(256, 1, 3))


def _pool_setup(chain, copies, boxes=False, tf_arithmetic=False):
    import cv2
    import numpy as np
    cv2.setNumThreads(1)  # the pool fills the cores
    _pool_state.update(chain=_albumentations_chain(chain, boxes, tf_arithmetic) if chain
                       else None, copies=copies, rng=np.random.default_rng())


def _pool_one(item):
    """One input -> (its `copies` encoded JPEGs, label)."""
    import cv2
    import numpy as np
    path, label = item
    with open(path, "rb") as f:
        data = np.frombuffer(f.read(), np.uint8)
    image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    augment, encoded = _pool_state["chain"], []
    for _ in range(_pool_state["copies"]):
        out = augment(image=image)["image"] if augment else image
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        encoded.append(jpeg.tobytes())
    return encoded, label


def run_pool(folder, out_dir, copies, chain, tf_arithmetic=False):
    """P0 (chain None) or P1: files -> Pool(decode, augment, encode) -> TFRecordWriter."""
    import multiprocessing
    import tensorflow as tf
    count = 0
    pool = multiprocessing.Pool(POOL_PROCESSES, _pool_setup,
                                (chain, copies, False, tf_arithmetic))
    with tf.io.TFRecordWriter(os.path.join(out_dir, "out.tfrecord")) as writer:
        for encoded, label in pool.imap(_pool_one, list_inputs(folder), chunksize=8):
            for data in encoded:
                writer.write(_example(data, label))
                count += 1
    pool.close()
    pool.join()  # (the workers' CPU time counts once they are reaped)
    return count


BOX_KEYS = ("image/object/bbox/ymin", "image/object/bbox/xmin", "image/object/bbox/ymax",
            "image/object/bbox/xmax")


def _pool_boxes_one(record):
    """One OD API record -> its `copies` augmented records: the input's features with the new
    image, its hash, the boxes left and every per-object list cut to them."""
    import hashlib
    import cv2
    import numpy as np
    import tensorflow as tf  # (imported before the fork: only the protobuf classes are used)
    example = tf.train.Example.FromString(record)
    feature = example.features.feature
    data = np.frombuffer(feature["image/encoded"].bytes_list.value[0], np.uint8)
    image = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    ymin, xmin, ymax, xmax = (np.array(feature[k].float_list.value) for k in BOX_KEYS)
    boxes = np.stack([xmin, ymin, xmax, ymax], 1)
    objects = {k: feature[k] for k in feature
               if k.startswith("image/object/") and k not in BOX_KEYS}
    outputs = []
    for _ in range(_pool_state["copies"]):
        out = _pool_state["chain"](image=image, bboxes=boxes, index=np.arange(len(boxes)))
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(out["image"], cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        jpeg = jpeg.tobytes()
        kept, moved = list(out["index"]), np.asarray(out["bboxes"]).reshape(-1, 4)
        copy = tf.train.Example()
        copy.CopyFrom(example)
        features = copy.features.feature
        features["image/encoded"].bytes_list.value[:] = [jpeg]
        features["image/key/sha256"].bytes_list.value[:] = [
            hashlib.sha256(jpeg).hexdigest().encode()]
        for key, column in zip(BOX_KEYS, moved[:, [1, 0, 3, 2]].T):
            features[key].float_list.value[:] = column.tolist()
        for key, values in objects.items():
            kind = values.WhichOneof("kind")
            old = getattr(values, kind).value
            getattr(features[key], kind).value[:] = [old[int(i)] for i in kept]
        outputs.append(copy.SerializeToString())
    return outputs


def run_pool_boxes(records, out_dir, copies, chain):
    """P1-boxes: TFRecords -> Pool(parse, decode, augment with boxes, encode, build the
    records) -> TFRecordWriter."""
    import multiprocessing
    import tensorflow as tf
    count = 0
    pool = multiprocessing.Pool(POOL_PROCESSES, _pool_setup, (chain, copies, True))
    inputs = tf.data.TFRecordDataset(sorted(glob.glob(records))).as_numpy_iterator()
    with tf.io.TFRecordWriter(os.path.join(out_dir, "out.tfrecord")) as writer:
        for outputs in pool.imap(_pool_boxes_one, inputs, chunksize=8):
            for record in outputs:
                writer.write(record)
                count += 1
    pool.close()
    pool.join()
    return count


def count_boxes(out_dir):
    """What a run wrote, read back: records, records with the OD API's box lists (all four, of
    one length), and boxes."""
    import tensorflow as tf
    files = sorted(glob.glob(os.path.join(out_dir, "*.tfrecord")))
    records = with_boxes = boxes = 0
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        lengths = {len(feature[k].float_list.value) for k in BOX_KEYS if k in feature}
        records += 1
        if len(lengths) == 1 and all(k in feature for k in BOX_KEYS):
            with_boxes += 1
            boxes += lengths.pop()
    return {"records": records, "records_with_boxes": with_boxes, "boxes": boxes}


# --- augbatch ---------------------------------------------------------------------------------

_clusters = contextlib.ExitStack()  # a local Dask cluster, kept warm from the warm-up run on
atexit.register(_clusters.close)


def _dask_args(workers):
    """Beam args for a local Dask cluster of `workers` processes (started once per process)."""
    if not hasattr(_dask_args, "address"):
        from pipeline import runners
        _dask_args.address = _clusters.enter_context(runners.dask_cluster(workers))
    return ["--runner=pipeline.dask_runner.DaskRunner",
            f"--dask_client_address={_dask_args.address}"]


def run_augbatch(inputs, out_dir, copies, chain, beam_args=(), dask_workers=0, **runtime):
    from pipeline import config, run
    if dask_workers:
        beam_args = list(beam_args) + _dask_args(dask_workers)
    job = config.load(None, overrides={
        "input": (inputs,), "output": out_dir, "chain": CHAINS[chain], "copies": copies,
        "keep_original": False, "quality": QUALITY, "format": "jpeg", **runtime})
    manifest = run.run_expand(job, beam_args, overwrite=True)
    return manifest["counts"]["outputs"]


VARIANTS = {"F0": lambda a: run_tf_data(a.inputs, a.out, a.copies, None),
            "B1": lambda a: run_tf_data(a.inputs, a.out, a.copies, a.chain),
            "B2": lambda a: run_idg(a.inputs, a.out, a.copies, a.chain),
            "P0": lambda a: run_pool(a.inputs, a.out, a.copies, None),
            "P1": lambda a: run_pool(a.inputs, a.out, a.copies, a.chain, a.tf_arithmetic),
            "P1-boxes": lambda a: run_pool_boxes(a.inputs, a.out, a.copies, a.chain),
            "augbatch": lambda a: run_augbatch(a.inputs, a.out, a.copies, a.chain,
                                               a.beam_args, a.dask_workers,
                                               **json.loads(a.runtime))}


# --- measuring --------------------------------------------------------------------------------

class PeakMemory:
    """Peak resident memory of this process and its children (Beam's worker processes),
    sampled every 50 ms; ru_maxrss covers peaks between samples for this process."""

    def __init__(self):
        import psutil
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.05):
            total = 0
            for p in [self.process] + self.process.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except Exception:  # noqa: BLE001 - a child that just exited
                    pass
            self.peak = max(self.peak, total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = max(self.peak, self_peak)


def cpu_seconds():
    """CPU seconds of this process, its finished children and its live descendants (a Dask
    cluster's workers, alive from the warm-up run to the end)."""
    import psutil
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            times = p.cpu_times()
            live += times.user + times.system
        except Exception:  # noqa: BLE001 - a child that just exited
            pass
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + live


def measure(args):
    run = VARIANTS[args.variant]
    if args.warmup:
        warm = argparse.Namespace(**{**vars(args), "inputs": args.warmup,
                                     "out": args.out + "-warmup"})
        os.makedirs(warm.out, exist_ok=True)
        run(warm)
        shutil.rmtree(warm.out, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with PeakMemory() as memory:
        started, cpu, main = time.perf_counter(), cpu_seconds(), time.thread_time()
        outputs = run(args)
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        main = time.thread_time() - main
    # The main thread's share of the CPU: for augbatch, Beam's work, decoding and building the
    # records (TensorFlow's ops and the augment pool run on other threads).
    return {"outputs": outputs, "wall_s": wall, "cpu_s": cpu, "main_thread_cpu_s": main,
            "peak_rss_mb": memory.peak / 2 ** 20}


def arguments():
    """The parser of one row's arguments (also how the smoke test checks every row's)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--inputs", required=True, help="class folder (or TFRecord glob for "
                        "augbatch and P1-boxes)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--chain", choices=sorted(CHAINS), default="standard")
    parser.add_argument("--warmup", help="a small class folder to run once before timing")
    parser.add_argument("--runtime", default="{}", help="augbatch Job fields, as JSON")
    parser.add_argument("--beam-args", default="[]", help="augbatch: Beam options, as JSON")
    parser.add_argument("--dask-workers", type=int, default=0, help="augbatch: run on a local "
                        "Dask cluster of this many worker processes (0: none)")
    parser.add_argument("--count-boxes", action="store_true", help="after timing, read the "
                        "output back and report its records and boxes")
    parser.add_argument("--tf-arithmetic", action="store_true", help="P1: brightness and "
                        "contrast as tf.image computes them (the contrast around each "
                        "channel's mean), as lookup tables")
    return parser


def main(argv=None):
    args = arguments().parse_args(argv)
    args.beam_args = json.loads(args.beam_args)
    result = measure(args)
    if args.count_boxes:
        result["written"] = count_boxes(args.out)
    shutil.rmtree(args.out, ignore_errors=True)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
