"""The Beam DoFns: read, decode + validate, augment + encode. Every failure becomes an error
record on the ERRORS output (never an exception that kills the job, never a silent drop)."""
import collections
import dataclasses
import functools
import hashlib
import io
import logging
import math
import os
import re
import typing
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.utils import shared

from pipeline import balance, progress, sources
from pipeline import errors as stops
from pipeline import targets as targets_mod
from pipeline.chain import example_seed

ERRORS = "errors"
ORIENTED = "oriented"  # the EXIF orientation (2-8) of each input that has one
TARGET_COUNTS = "target_counts"  # per batch: objects kept, dropped, clipped; copies dropped
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
    targets: Optional[object] = None  # targets.Targets: boxes, masks, keypoints
    split: Optional[str] = None  # the dataset's split (train, val ...) it was found in

    @functools.cached_property
    def sha256(self):
        """The hex sha256 of `data` (in augment/ops: replay tells a changed input by it),
        computed once for all the input's copies."""
        return hashlib.sha256(self.data).hexdigest()


@dataclasses.dataclass
class Decoded:
    input: Input
    # uint8 [H, W, channels]; None for a plain RGB JPEG or PNG whose decoding is left to the
    # augment call (DecodeImage(in_graph=True)): input.data holds it, `shape` says its size.
    image: Optional[np.ndarray]
    format: str  # jpeg, png, gif, bmp
    native_channels: int
    oriented: int = 1  # the EXIF orientation applied at decode (1: the pixels as stored)
    shape: Optional[tuple] = None  # the image's [H, W, channels] (from the image if not given)

    def __post_init__(self):
        if self.shape is None:
            self.shape = self.image.shape

    @property
    def nbytes(self):
        return math.prod(self.shape)  # (np.prod costs ~10 us a call: twice per input)

    def pixels(self):
        """The image, decoded here if the augment call was to decode it (DecodeImage's
        decode raises as DecodeImage would have)."""
        return self.image if self.image is not None else DecodeImage.decode(self.input.data,
                                                                            self.format)


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    """One line of errors.jsonl: the input (key, file, record index), where it failed, why."""
    key: str
    source: str
    record_index: Optional[int]
    stage: str  # read | decode | validate | augment | encode | write
    error_type: str
    message: str  # the details, naming the file or record
    reason: str = ""  # a short fixed phrase, for counting errors by reason

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["source"], out["message"] = (sources.printable(out["source"]),
                                         sources.printable(out["message"]))
        return out


@dataclasses.dataclass
class OutputRecord:
    key: str
    copy_index: int
    label: Optional[int]
    payload: bytes  # serialized tf.train.Example
    split: Optional[str] = None  # written to this split's shards
    # The last record of a batch: every input before it has all its records written (the
    # bucket writer may commit there, sinks.WriteBuckets).
    ends_batch: bool = False


# TensorFlow's decorations around the message: op and graph node names, "[Op:DecodeImage]".
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}|\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\]")


def message_of(exc):
    """The one line of an exception that says what went wrong. TensorFlow's errors keep it in
    .message, as the last line after a graph trace; other exceptions (Keras' among them, which
    append the call's arguments) say it first."""
    tf_message = getattr(exc, "message", None)
    text = str(tf_message or exc or type(exc).__name__)
    lines = [line.strip() for line in _TF_NOISE.sub("", text).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if tf_message else lines[0])[:500]


def reason_of(message):
    """A default reason: the message with its numbers and quoted names blanked out."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", message))[:100]


def error(stage, exc, key, source, record_index=None, reason=None, message=None):
    """The error record of one input, on the ERRORS output. `message` replaces the exception's
    own text when the caller can say it better (its type is still recorded)."""
    message = message or message_of(exc)
    progress.count(progress.DONE)  # an input that errors is finished
    return beam.pvalue.TaggedOutput(ERRORS, ErrorRecord(
        key=key, source=source, record_index=record_index, stage=stage,
        error_type=type(exc).__name__, message=message, reason=reason or reason_of(message)))


# --- read --------------------------------------------------------------------------------------

def read_image_file(ref, max_bytes):
    """(bytes, None) of the image file `ref` names, or (None, its error record): any read
    failure is this input's error."""
    progress.count(progress.READ)
    try:
        return sources.read_bytes(ref.path, max_bytes), None
    except Exception as e:  # noqa: BLE001
        reason, message = sources.read_failure(ref.path, e)
        return None, error("read", e, ref.key, ref.path, reason=reason, message=message)


class ReadImageFile(beam.DoFn):
    """InputRef of an image file -> Input. `label_names`: label -> class name (a dict, or a
    list indexed by label); `max_bytes`: larger files are refused unread."""

    def __init__(self, label_names, max_bytes=None):
        self.label_names = (dict(label_names) if isinstance(label_names, dict)
                            else dict(enumerate(label_names)))
        self.max_bytes = max_bytes

    def process(self, ref):
        data, failed = read_image_file(ref, self.max_bytes)
        if failed is not None:
            yield failed
            return
        text = self.label_names.get(ref.label) if ref.label is not None else None
        yield Input(key=ref.key, source=ref.path, record_index=None, data=data,
                    label=ref.label, label_text=text)


class ReadTFRecordFile(beam.DoFn):
    """A TFRecord file's RecordRange (or InputRef: the whole file) -> one Input (or error) per
    record in it.

    Where the file is damaged (a CRC mismatch, a truncated tail) the records before the damage
    are kept and the rest of the file, which cannot be framed any more, becomes one error
    record keyed `file:index` of the first record lost, naming the byte offset. A file holding
    no record at all is an error too (`file:0`). A record over `max_bytes` is damage.
    """

    def __init__(self, image_feature, label_feature, max_bytes=None, skip=frozenset()):
        self.image_feature, self.label_feature = image_feature, label_feature
        self.max_bytes, self.skip = max_bytes, skip  # skip: keys done (expand --resume)

    def process(self, ref):
        part = ref if isinstance(ref, sources.RecordRange) else sources.RecordRange(ref)
        ref = part.ref
        try:
            stream = sources.open_records(ref.path)
            if part.offset:
                stream.seek(part.offset)
        except Exception as e:  # noqa: BLE001
            progress.count(progress.READ)
            reason, message = sources.read_failure(ref.path, e)
            yield error("read", e, f"{ref.key}:0", ref.path, 0, reason=reason, message=message)
            return
        index = part.first
        try:
            with stream:
                for record in sources.iter_records(stream, self.max_bytes, part.offset):
                    progress.count(progress.READ)
                    if f"{ref.key}:{index}" not in self.skip:
                        yield self._parse(ref, index, record)
                    index += 1
                    if index - part.first == part.count:
                        break
            if index == 0:
                progress.count(progress.READ)
                yield error("read", ValueError("no record"), f"{ref.key}:0", ref.path, 0,
                            reason="empty TFRecord file",
                            message=f"{sources.printable(ref.path)} holds no record (an empty "
                                    "file)")
        except Exception as e:  # noqa: BLE001 - damage: the records before it are kept
            progress.count(progress.READ)
            kept = ("no record before it" if index == 0 else "record 0 before it was read"
                    if index == 1 else f"records 0-{index - 1} before it were read")
            yield error("read", e, f"{ref.key}:{index}", ref.path, index,
                        reason="damaged TFRecord file",
                        message=f"{ref.path} is damaged: {message_of(e)}; {kept}, the rest of "
                                "the file cannot be read")

    def _parse(self, ref, index, record):
        """The record as an Input, or its error (never raises: the records after it go on)."""
        import tensorflow as tf
        key = f"{ref.key}:{index}"

        def bad(reason, message):
            return error("decode", ValueError(f"record {index} of {ref.path}: {message}"), key,
                         ref.path, index, reason=reason)
        try:
            example = tf.train.Example.FromString(record)
        except Exception as e:  # noqa: BLE001
            return bad("not a tf.train.Example", f"not a tf.train.Example ({message_of(e)})")
        features = example.features.feature
        image, label = features.get(self.image_feature), features.get(self.label_feature)
        if image is None:
            return bad("no image feature", f"no feature '{self.image_feature}' (set "
                       f"input.image_feature to the name your records use; they have: "
                       f"{', '.join(sorted(features)) or 'no features'})")
        if image.WhichOneof("kind") != "bytes_list" or len(image.bytes_list.value) != 1:
            return bad("image feature of the wrong type", f"feature '{self.image_feature}' "
                       f"must hold one bytes value, it holds {_describe(image)}")
        try:
            found = targets_mod.from_features(features)
        except targets_mod.TargetError as e:
            return bad("bad targets", str(e))
        if label is None and found is None:  # (a detection or segmentation record needs none)
            return bad("no label feature", f"no label feature '{self.label_feature}' (set "
                       "input.label_feature to the name your records use) and no boxes or "
                       "segmentation mask")
        if label is not None and (label.WhichOneof("kind") != "int64_list"
                                  or len(label.int64_list.value) != 1):
            return bad("label feature of the wrong type", f"feature '{self.label_feature}' "
                       f"must hold one int64 value, it holds {_describe(label)}")
        try:
            extra = tf.train.Features()
            for name in sorted(features):
                if (name not in (self.image_feature, self.label_feature)
                        and not (found and targets_mod.is_target_feature(name))):
                    extra.feature[name].CopyFrom(features[name])
            text = features.get("image/class/text")
            return Input(key=key, source=ref.path, record_index=index,
                         data=image.bytes_list.value[0],
                         label=int(label.int64_list.value[0]) if label is not None else None,
                         label_text=text.bytes_list.value[0].decode("utf-8", "replace")
                         if text is not None and text.bytes_list.value else None,
                         extra=extra.SerializeToString(deterministic=True), targets=found)
        except Exception as e:  # noqa: BLE001
            return bad(reason_of(message_of(e)), message_of(e))


def _where(item):
    return (f"record {item.record_index} of {item.source}" if item.record_index is not None
            else item.source)


def _describe(feature):
    kind = feature.WhichOneof("kind")
    if kind is None:
        return "nothing"
    values = getattr(feature, kind).value
    return f"{len(values)} {kind.replace('_list', '')} value{'s' if len(values) != 1 else ''}"


# --- decode and validate -----------------------------------------------------------------------

PIL_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp",
               "WEBP": "webp", "TIFF": "tiff"}
# Decoded by Pillow: TensorFlow reads a palette BMP's indices as gray values, and reads no
# WebP (before 2.18) or TIFF.
PILLOW_DECODES = ("bmp", "webp", "tiff")


class UnsupportedFormat(ValueError):
    pass


def sniff(data):
    """(format, width, height) from the header alone, without decoding the pixels."""
    return header(data)[:3]


class Header(typing.NamedTuple):
    format: str
    width: int  # as stored
    height: int
    orientation: int  # EXIF orientation 1-8 (1 where there is none or it is not 1-8)
    mode: str  # Pillow's mode: RGB, L, CMYK, P ...


# Pillow tries every format's reader in turn unless told which: told, a JPEG's header is read
# in half the time (~35 us less per input). Any other start: every reader, as before.
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))


def header(data):
    """The image's Header, from the header alone."""
    from PIL import Image
    told = next((name for magic, name in _MAGIC if data.startswith(magic)), None)
    with Image.open(io.BytesIO(data), formats=[told] if told else None) as im:
        fmt = PIL_FORMATS.get(im.format)
        if fmt is None:
            raise UnsupportedFormat(f"unsupported image format {im.format} (augbatch reads "
                                    f"{sources.SUPPORTED})")
        orientation = 1
        if "exif" in im.info or im.format == "TIFF":  # (parsing EXIF costs: only if there)
            try:
                orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001 - damaged EXIF: the pixels as stored
                pass
        return Header(fmt, im.width, im.height, orientation if 1 <= orientation <= 8 else 1,
                      im.mode)


EXIF_ORIENTATION = 0x0112


def upright(image, orientation):
    """[H, W, ...] pixels as stored -> as a viewer shows them, for an EXIF orientation 1-8
    (what PIL.ImageOps.exif_transpose does, on arrays; moves only, no arithmetic)."""
    if orientation in (5, 6, 7, 8):  # the stored rows are the shown columns
        image = np.swapaxes(image, 0, 1)
    if orientation in (2, 3, 6, 7):  # (after the swap) mirrored left-right
        image = image[:, ::-1]
    if orientation in (3, 4, 7, 8):  # upside down
        image = image[::-1]
    return np.ascontiguousarray(image)


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


def decode_with_pillow(data):
    """uint8 [H, W, 1 or 3] by Pillow (palettes applied, alpha dropped)."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
        return np.asarray(im.convert("L" if gray else "RGB")).reshape(
            im.height, im.width, 1 if gray else 3)


class DecodeImage(beam.DoFn):
    """Input -> Decoded: the header is checked against max_pixels before any pixel is decoded,
    then TensorFlow decodes JPEG, PNG and GIF, Pillow BMP, WebP and TIFF.

    What arrives how: grayscale, 16-bit (scaled to 8 bits), palette and CMYK images are
    converted to the configured channels; alpha is dropped; an animated GIF gives its first
    frame. Each file that cannot be used is one error record with the reason.

    `in_graph`: a plain RGB JPEG or PNG (kept as stored, 3 channels wanted) is not decoded
    here but in the augment call, by the same TensorFlow op (the same pixels): there it runs in
    TensorFlow's threads, beside the others, not on this one, which every input passes
    through. Its header is checked here all the same; if its data then fails to decode,
    AugmentAndEncode reports it as this DoFn would.
    """

    def __init__(self, channels, max_pixels, exif_orientation=True, in_graph=False):
        self.channels, self.max_pixels = channels, max_pixels
        self.exif_orientation = exif_orientation  # turn photos upright (input.exif_orientation)
        self.in_graph = in_graph

    def setup(self):
        from PIL import Image
        # max_pixels is checked here, from the header; Pillow's own fixed limit would refuse a
        # large header before telling its size.
        Image.MAX_IMAGE_PIXELS = None

    def process(self, item):
        where = (item.key, item.source, item.record_index)
        if not item.data:
            yield error("decode", ValueError("empty file (0 bytes)"), *where, reason="empty file")
            return
        try:
            fmt, width, height, orientation, mode = header(item.data)
        except UnsupportedFormat as e:
            yield error("decode", e, *where, reason="unsupported image format")
            return
        except Exception:  # noqa: BLE001 - Pillow knows no such header
            yield error("decode", ValueError(
                f"not an image: the data starts with {item.data[:12]!r} ({sources.SUPPORTED} "
                "expected)"), *where, reason="not an image")
            return
        if width * height > self.max_pixels:
            yield error("validate", ValueError(
                f"image is {width}x{height} = {width * height} pixels, over the limit "
                f"max_pixels={self.max_pixels}"), *where, reason="too many pixels")
            return
        turned = orientation if self.exif_orientation else 1
        # (Pillow's "RGB" JPEGs and PNGs, 16-bit ones and a PNG's transparent colour included,
        # are those TensorFlow decodes to 3 channels as they are)
        in_graph = (self.in_graph and fmt in ("jpeg", "png") and mode == "RGB"
                    and self.channels == 3 and turned == 1)
        if not in_graph:
            try:
                image = self.decode(item.data, fmt)
            except Exception as e:  # noqa: BLE001
                yield decode_error(item, fmt, e)
                return
            progress.count(progress.DECODED)
            if turned != 1:  # the photo as a viewer shows it; its targets were drawn on that
                image = upright(image, turned)
            height, width = image.shape[:2]
        if item.targets is not None:
            try:
                targets_mod.decode(item.targets, height, width)
            except targets_mod.TargetError as e:
                yield error("decode", e, *where, reason="bad targets",
                            message=f"{_where(item)}: {e}")
                return
        if in_graph:
            yield Decoded(item, None, fmt, 3, shape=(height, width, 3))
        else:
            yield Decoded(item, to_channels(image, self.channels), fmt, image.shape[-1], turned)
        if orientation != 1:
            yield beam.pvalue.TaggedOutput(ORIENTED, orientation)

    @staticmethod
    def decode(data, fmt):
        if fmt in PILLOW_DECODES:
            return decode_with_pillow(data)
        import tensorflow as tf
        # (bytes as a tensor first: given bytes, the op takes TensorFlow's slower eager
        # fallback path, ~0.09 ms more per input)
        return tf.io.decode_image(tf.constant(data), channels=0, expand_animations=False).numpy()



def decode_error(item, fmt, tf_error):
    """The error record of an input whose data does not decode; Pillow usually says more than
    TensorFlow ('image file is truncated')."""
    data = item.data
    try:
        decode_with_pillow(data)
    except Exception as e:  # noqa: BLE001
        message = f"cannot decode the {fmt.upper()} data: {message_of(e)}"
    else:
        message = f"TensorFlow cannot decode this {fmt.upper()} data: {message_of(tf_error)}"
    return error("decode", tf_error, item.key, item.source, item.record_index,
                 reason=f"corrupt or truncated {fmt.upper()}", message=message)


# --- augment and encode ------------------------------------------------------------------------

FAIL_ONCE_ENV = "AUGBATCH_FAIL_ONCE"


def fail_once_for_tests(stage):
    """Test-only fault injection. With AUGBATCH_FAIL_ONCE=<stage>:<marker file> set, the first
    call for `stage` creates the marker file and raises; every later call (the file exists)
    passes. The tests use it to show that a failed batch is retried without changing a byte."""
    spec = os.environ.get(FAIL_ONCE_ENV)
    if not spec or spec.partition(":")[0] != stage:
        return
    try:
        open(spec.partition(":")[2], "x").close()  # atomic: one failure across all workers
    except FileExistsError:
        return
    raise RuntimeError(f"{FAIL_ONCE_ENV}: injected failure at {stage}")


def augments(job, split):
    """Whether inputs of `split` get augmented copies (an input of no split always does)."""
    return split is None or split in job.augment_splits


def output_format(job_format, source_format):
    if job_format != "same":
        return job_format
    return source_format if source_format in ("jpeg", "png") else "png"


class BatchByShape(beam.DoFn):
    """Decoded images -> lists of images of one shape, as many as one augment call takes
    (augment.inputs_per_batch). Beam's BatchElements is not shape-aware (its bucketing needs a
    shuffle of the decoded pixels), and mixed shapes would split its batches into small groups.

    A partial batch waits in the bundle for more images of its shape; past a memory cap the
    fullest one goes on without them; the bundle's end sends the rest.
    """

    def __init__(self, job):
        self.job = job

    def start_bundle(self):
        self.waiting, self.waiting_bytes = {}, 0

    def process(self, item):
        from pipeline import augment
        shape = item.shape
        self.waiting.setdefault(shape, []).append(item)
        self.waiting_bytes += item.nbytes
        if len(self.waiting[shape]) >= augment.inputs_per_batch(shape, self.job):
            yield self._take(shape)
        elif self.waiting_bytes > augment.MAX_WAITING_BYTES:
            yield self._take(max(self.waiting, key=lambda s: len(self.waiting[s])))

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows
        for shape in list(self.waiting):
            yield GlobalWindows.windowed_value(self._take(shape))

    def _take(self, shape):
        batch = self.waiting.pop(shape)
        self.waiting_bytes -= sum(item.nbytes for item in batch)
        return batch


DROPPED = "dropped"  # a copy the target rules drop (e.g. no object left and keep_empty off)


# The ChainRunner of this process (Beam's Shared): the DoFn copies of a run share it, and a
# later run of the same job but for its paths (a long-lived worker, a notebook, the
# benchmark's warm runs) reuses it instead of tracing the chain again (~0.4 CPU-s, and TensorFlow
# optimizing each function on its first call); a run of another job replaces it.
_RUNNERS = shared.Shared()


class AugmentAndEncode(beam.DoFn):
    """A batch of Decoded -> OutputRecords for every copy of every input.

    The chain is traced once per worker process in setup() and shared by the process's threads
    (Beam's Shared, _RUNNERS). Images of one shape run through it together, each copy with its
    own seed, so the bytes do not depend on how Beam batched them. An input whose copies fail
    is retried alone; if it fails again it becomes one error record and none of its copies is
    written.

    Batches run in TensorFlow on a small thread pool, a few at a time (runner.in_flight):
    TensorFlow releases the GIL, so while they run this thread reads and decodes the next
    inputs and builds the records of finished batches, and several batches at once keep the
    cores busy where one alone leaves gaps (a chunk of a compiled chain, or one encode, runs on
    one core). At most in_flight + 1 batches are held (augment.PIXELS_PER_BATCH caps each).
    Records leave in the order their batches finish; the shard writer orders them, so the
    bytes do not change.
    """

    def __init__(self, job, config_hash):
        self.job, self.config_hash = job, config_hash

    def setup(self):
        import concurrent.futures
        from pipeline import augment, quiet
        quiet.native_logs_follow_tf_level()
        # With augment.balance inputs get different numbers of copies: each is given to the
        # runner as one row per copy (copy c of an input is the same image either way).
        runner_job = (dataclasses.replace(self.job, copies=1) if self.job.balance_plan
                      else self.job)
        # Jobs that differ only in what the runner never reads (where, which seed, how
        # batched, how many shards) share one traced, and with XLA compiled, chain.
        self.runner = _RUNNERS.acquire(lambda: augment.ChainRunner(runner_job),
                                       tag=repr(dataclasses.replace(
                                           runner_job, input=(), output="", config_path="",
                                           seed=0, batch_size=0, num_shards=0)))
        self.pool = concurrent.futures.ThreadPoolExecutor(self.runner.in_flight,
                                                          thread_name_prefix="augment")
        self.pending = collections.deque()
        self._checked = {}  # frozenset of target kinds -> None, or why the chain refuses them

    def teardown(self):
        self.pool.shutdown()

    def process(self, batch):
        if stops.stopped_by:  # the command was stopped: its pool may be shut down under it by
            batch = ()        # now (several worker threads), and nothing more is kept
        by_shape = {}  # (and whether decoded: a batch decodes in the graph or not at all)
        for item in batch:
            by_shape.setdefault((item.shape, item.image is None), []).append(item)
        for items in by_shape.values():
            self.pending.append((items, self.pool.submit(self._augment_encode, items, True)))
        # Outputs (and progress counts, which are Beam metrics: this thread's) leave from here.
        while self.pending and (len(self.pending) > self.runner.in_flight
                                or self.pending[0][1].done()):
            yield from self._outputs(*self.pending.popleft())

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows
        while self.pending:
            for out in self._outputs(*self.pending.popleft()):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)

    def process_now(self, batch):
        """Every output of `batch`, at once (for callers outside a pipeline: preview, tests)."""
        out = list(self.process(batch))
        while self.pending:
            out.extend(self._outputs(*self.pending.popleft()))
        return out

    def _outputs(self, items, future):
        """The records of a finished batch; if it failed, each input again, alone."""
        try:
            encoded = future.result()
        except Exception:  # noqa: BLE001 - retry one by one so one bad input spoils nothing
            encoded = None
        if encoded is not None:
            progress.count(progress.DECODED, sum(item.image is None for item in items))
            yield from self._written(len(items), encoded)
            return
        for item in items:
            if item.image is None:  # decoded here, as DecodeImage would: its error if it fails
                try:
                    item = dataclasses.replace(item, image=item.pixels())
                except Exception as e:  # noqa: BLE001
                    yield decode_error(item.input, item.format, e)
                    continue
                progress.count(progress.DECODED)
            try:
                entries = self._augment_encode([item])
            except Exception as e:  # noqa: BLE001
                yield error("augment", e, item.input.key, item.input.source,
                            item.input.record_index)
                continue
            yield from self._written(1, entries)

    def _written(self, inputs, entries):
        """The records of these entries and, for inputs with targets, what became of their
        objects (a copy the rules dropped has no data)."""
        records = [self._record(*entry) for entry in entries if entry[2] is not None]
        if records:
            records[-1] = dataclasses.replace(records[-1], ends_batch=True)
        self._count(inputs, len(records))
        yield from records
        counts, outputs = collections.Counter(), collections.Counter()
        for entry in entries:
            item = entry[0]
            if item.input.targets is not None:
                counts.update(entry[6] or {})
                counts["copies_dropped"] += entry[2] is None
                outputs[item.input.key] += entry[2] is not None
        counts["inputs_all_dropped"] = sum(1 for n in outputs.values() if n == 0)
        if outputs:
            yield beam.pvalue.TaggedOutput(TARGET_COUNTS, dict(counts))

    @staticmethod
    def _count(inputs, records):
        progress.count(progress.DONE, inputs)
        progress.count(progress.OUTPUTS, records)

    def _augment_encode(self, items, first_try=False):
        """The TensorFlow work of a batch (in the pool): [(item, copy index, bytes, format,
        shape, targets, counts, op steps)] for every copy and, with keep_original, the
        original."""
        job = self.job
        if first_try:
            fail_once_for_tests("augment")
        # Inputs of a split that is not augmented (val, test) are written untouched only.
        augmented = [item for item in items if augments(job, item.input.split)]
        how_many = [balance.copies_of(job, item.input.key, item.input.label)
                    for item in augmented]
        copies = [(item, c) for item, n in zip(augmented, how_many) for c in range(1, n + 1)]
        formats = [output_format(job.format, item.format) for item, _ in copies]
        out = []
        if copies:
            seeds = np.array([example_seed(job.seed, item.input.key, c) for item, c in copies],
                             np.int32)
            # One array per input: the runner makes the copies inside the graph.
            images = (self.runner.decode_images([item.input.data for item in augmented])
                      if augmented[0].image is None
                      else np.stack([item.image for item in augmented]))
            if job.balance_plan:  # one row per copy (the runner makes one copy of each)
                images = np.repeat(images, how_many, axis=0)
            carried = self._carry(copies, seeds, images.shape)
            encoded, shape, ops = self.runner.augment_encode(images, seeds, formats)
            out += [(item, c, data if targets is not DROPPED else None, fmt, shape, targets,
                     counts, steps) for (item, c), data, fmt, (targets, counts), steps
                    in zip(copies, encoded, formats, carried, ops)]
        out += [self._original(item) for item in items
                if job.keep_original or not augments(job, item.input.split)]
        return out

    def _carry(self, copies, seeds, shape):
        """(Targets, counts) of each copy: (None, None) for an input without targets,
        (DROPPED, counts) for a copy the rules drop. Raises for targets the chain cannot carry
        (the input becomes an error record)."""
        carried = [(None, None)] * len(copies)
        with_targets = [i for i, (item, _) in enumerate(copies) if item.input.targets is not None]
        if not with_targets:
            return carried
        for i in with_targets:
            self._check_chain(copies[i][0].input.targets.kinds())
        moves = self.runner.geometry(seeds[with_targets], shape[1], shape[2])
        for row, i in enumerate(with_targets):
            targets, counts = targets_mod.carry(
                copies[i][0].input.targets, [(t[row], h, w) for t, h, w in moves],
                self.job.target_rules, shape[1], shape[2])
            carried[i] = (DROPPED if targets is None else targets, counts)
        return carried

    def _check_chain(self, kinds):
        """Refuse targets this chain cannot carry (validation checked the kinds it saw in the
        first records; another record may bring more)."""
        kinds = frozenset(kinds)
        if kinds not in self._checked:
            try:
                targets_mod.check_chain(self.job.chain, kinds)
            except Exception as e:  # noqa: BLE001 - the ConfigError says why, with its path
                self._checked[kinds] = ValueError(f"the chain cannot carry this input's "
                                                  f"{', '.join(sorted(kinds))}: {e}")
            else:
                self._checked[kinds] = None
        if self._checked[kinds] is not None:
            raise self._checked[kinds]

    def _original(self, item):
        fmt = output_format(self.job.format, item.format)
        if (fmt == item.format and item.native_channels == self.job.channels
                and item.oriented == 1):
            data = item.input.data  # the untouched original bytes
        else:
            data = self.runner.encode(item.pixels()[None], [fmt])[0]
        return item, 0, data, fmt, item.shape, item.input.targets, None, []

    def _record(self, item, copy_index, data, fmt, shape, targets, counts, steps):
        """The record of one output; `steps`: what was done to it (chain.op_records)."""
        from pipeline import example
        ops = example.ops_json(item.input.sha256, steps) if self.job.record_ops else None
        payload = example.build(item.input, copy_index, data, fmt, shape, self.job.seed,
                                self.config_hash, targets, self.job.tfds, ops)
        return OutputRecord(item.input.key, copy_index, item.input.label, payload,
                            item.input.split)
