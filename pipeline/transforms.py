"""The Beam DoFns: read, decode + validate, augment + encode. Every failure becomes an error
record on the ERRORS output (never an exception that kills the job, never a silent drop)."""
import dataclasses
import io
import logging
from typing import Optional

import apache_beam as beam
import numpy as np

from pipeline import progress, sources
from pipeline.chain import example_seed

ERRORS = "errors"
log = logging.getLogger("augbatch")


@dataclasses.dataclass
class Input:
    """An input's encoded image and everything known about it."""
    key: str
    source: str  # file path
    record_index: Optional[int]
    data: bytes
    label: Optional[int] = None
    label_text: Optional[str] = None
    extra: bytes = b""  # serialized tf.train.Features passed through to every output


@dataclasses.dataclass
class Decoded:
    input: Input
    image: np.ndarray  # uint8 [H, W, channels]
    format: str  # jpeg, png, gif, bmp
    native_channels: int


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    key: str
    source: str
    record_index: Optional[int]
    stage: str  # read | decode | validate | augment | encode | write
    error_type: str
    message: str

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class OutputRecord:
    key: str
    copy_index: int
    label: Optional[int]
    payload: bytes  # serialized tf.train.Example


def error(stage, exc, key, source, record_index=None):
    # TensorFlow's errors keep the useful text in .message (str() starts with a graph trace).
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    progress.count(progress.DONE)  # an input that errors is finished
    return beam.pvalue.TaggedOutput(ERRORS, ErrorRecord(
        key=key, source=source, record_index=record_index, stage=stage,
        error_type=type(exc).__name__, message=text.strip().split("\n")[-1][:500]))


# --- read --------------------------------------------------------------------------------------

class ReadImageFile(beam.DoFn):
    """InputRef of an image file -> Input."""

    def __init__(self, label_names):
        self.label_names = list(label_names)

    def process(self, ref):
        progress.count(progress.READ)
        try:
            data = sources.read_bytes(ref.path)
        except Exception as e:  # noqa: BLE001 - any read failure is this input's error
            yield error("read", e, ref.key, ref.path)
            return
        text = self.label_names[ref.label] if ref.label is not None else None
        yield Input(key=ref.key, source=ref.path, record_index=None, data=data,
                    label=ref.label, label_text=text)


class ReadTFRecordFile(beam.DoFn):
    """InputRef of a TFRecord file -> one Input per tf.train.Example in it."""

    def __init__(self, image_feature, label_feature):
        self.image_feature, self.label_feature = image_feature, label_feature

    def process(self, ref):
        index = -1
        try:
            with sources.open_records(ref.path) as stream:
                for index, record in enumerate(sources.iter_records(stream)):
                    progress.count(progress.READ)
                    yield self._parse(ref, index, record)
        except Exception as e:  # noqa: BLE001 - damage: the records before it are kept
            progress.count(progress.READ)
            yield error("read", e, f"{ref.key}:{index + 1}", ref.path, index + 1)

    def _parse(self, ref, index, record):
        import tensorflow as tf
        key = f"{ref.key}:{index}"
        try:
            example = tf.train.Example.FromString(record)
        except Exception as e:  # noqa: BLE001
            return error("decode", ValueError(f"not a tf.train.Example: {e}"), key, ref.path,
                         index)
        features = example.features.feature
        image = features.get(self.image_feature)
        if image is None:
            return error("decode", KeyError(f"no feature '{self.image_feature}'"), key,
                         ref.path, index)
        if image.WhichOneof("kind") != "bytes_list" or len(image.bytes_list.value) != 1:
            return error("decode", TypeError(f"feature '{self.image_feature}' must hold one "
                                             "bytes value"), key, ref.path, index)
        label = features.get(self.label_feature)
        if label is None:
            return error("decode", KeyError(
                f"no label feature '{self.label_feature}' (set input.label_feature to the "
                "name your records use)"), key, ref.path, index)
        if label.WhichOneof("kind") != "int64_list" or len(label.int64_list.value) != 1:
            return error("decode", TypeError(f"feature '{self.label_feature}' must hold one "
                                             "int64 value"), key, ref.path, index)
        data = image.bytes_list.value[0]
        extra = tf.train.Features()
        for name in sorted(features):
            if name not in (self.image_feature, self.label_feature):
                extra.feature[name].CopyFrom(features[name])
        text = features.get("image/class/text")
        return Input(key=key, source=ref.path, record_index=index, data=data,
                     label=int(label.int64_list.value[0]),
                     label_text=text.bytes_list.value[0].decode("utf-8", "replace")
                     if text is not None and text.bytes_list.value else None,
                     extra=extra.SerializeToString(deterministic=True))


# --- decode and validate -----------------------------------------------------------------------

PIL_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp"}


def sniff(data):
    """(format, width, height) from the header alone, without decoding the pixels."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        fmt = PIL_FORMATS.get(im.format)
        if fmt is None:
            raise ValueError(f"unsupported image format {im.format}")
        return fmt, im.width, im.height


def to_channels(image, channels):
    """uint8 [H, W, C] -> [H, W, channels]: gray is repeated, alpha is dropped, RGB -> luma."""
    have = image.shape[-1]
    if have == channels:
        return image
    if channels == 3:
        return np.repeat(image[..., :1], 3, axis=-1) if have in (1, 2) else image[..., :3]
    if have in (1, 2):
        return image[..., :1]
    luma = image[..., :3].astype(np.float32) @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


class DecodeImage(beam.DoFn):
    """Input -> Decoded: header check against max_pixels, then decode with TensorFlow."""

    def __init__(self, channels, max_pixels):
        self.channels, self.max_pixels = channels, max_pixels

    def setup(self):
        import tensorflow as tf
        self._decode = tf.function(
            lambda data: tf.io.decode_image(data, channels=0, expand_animations=False),
            input_signature=[tf.TensorSpec([], tf.string)], autograph=False)

    def process(self, item):
        where = (item.key, item.source, item.record_index)
        try:
            fmt, width, height = sniff(item.data)
        except Exception as e:  # noqa: BLE001
            yield error("decode", ValueError(f"not a readable image: {e}"), *where)
            return
        if width * height > self.max_pixels:
            yield error("validate", ValueError(
                f"image is {width}x{height} = {width * height} pixels, over the limit "
                f"max_pixels={self.max_pixels}"), *where)
            return
        try:
            image = self._decode(item.data).numpy()
        except Exception as e:  # noqa: BLE001
            yield error("decode", e, *where)
            return
        yield Decoded(item, to_channels(image, self.channels), fmt, image.shape[-1])


# --- augment and encode ------------------------------------------------------------------------

def output_format(job_format, source_format):
    if job_format != "same":
        return job_format
    return source_format if source_format in ("jpeg", "png") else "png"


class AugmentAndEncode(beam.DoFn):
    """A batch of Decoded -> OutputRecords for every copy of every input.

    The chain is traced once per worker in setup(). Images of one shape run through it together,
    each with its own seed, so the bytes do not depend on how Beam batched them. An input whose
    copies fail is retried alone; if it fails again it becomes one error record and none of its
    copies is written.
    """

    def __init__(self, job, config_hash):
        self.job, self.config_hash = job, config_hash

    def setup(self):
        from pipeline import augment
        self.runner = augment.ChainRunner(self.job)

    def process(self, batch):
        by_shape = {}
        for item in batch:
            by_shape.setdefault(item.image.shape, []).append(item)
        for items in by_shape.values():
            try:
                records = self._records(items)
            except Exception:  # noqa: BLE001 - retry one by one so one bad input spoils nothing
                records = None
            if records is not None:
                yield from records
                self._count(len(items), len(records))
                continue
            for item in items:
                try:
                    records = self._records([item])
                    yield from records
                    self._count(1, len(records))
                except Exception as e:  # noqa: BLE001
                    yield error("augment", e, item.input.key, item.input.source,
                                item.input.record_index)

    @staticmethod
    def _count(inputs, records):
        progress.count(progress.DONE, inputs)
        progress.count(progress.OUTPUTS, records)

    def _records(self, items):
        job = self.job
        copies = [(item, c) for item in items for c in range(1, job.copies + 1)]
        formats = [output_format(job.format, item.format) for item, _ in copies]
        out = []
        if copies:
            seeds = np.array([example_seed(job.seed, item.input.key, c) for item, c in copies],
                             np.int32)
            images = np.stack([item.image for item, _ in copies])
            encoded, shape = self.runner.augment_encode(images, seeds, formats)
            out += [self._record(item, c, data, fmt, shape)
                    for (item, c), data, fmt in zip(copies, encoded, formats)]
        if job.keep_original:
            out += [self._original(item) for item in items]
        return out

    def _original(self, item):
        fmt = output_format(self.job.format, item.format)
        if fmt == item.format and item.native_channels == self.job.channels:
            data = item.input.data  # the untouched original bytes
        else:
            data = self.runner.encode(item.image[None], [fmt])[0]
        return self._record(item, 0, data, fmt, item.image.shape)

    def _record(self, item, copy_index, data, fmt, shape):
        from pipeline import example
        payload = example.build(item.input, copy_index, data, fmt, shape, self.job.seed,
                                self.config_hash)
        return OutputRecord(item.input.key, copy_index, item.input.label, payload)
