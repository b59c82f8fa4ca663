"""Finding the inputs (in the driver) and reading them (in DoFns).

Each input gets a stable key: its path relative to the input folder (or to the glob's base
directory), and `file:index` for a record of a TFRecord file. Everything goes through Beam's
FileSystems, so gs://, s3:// and mem:// paths work as local ones do.

Nothing found is dropped silently. A local folder is listed here rather than by Beam, whose
listing skips broken symbolic links and symlinked folders without a word: symlinked folders
are followed (a dataset is often assembled from links), a link back to a folder above it (a
loop) is not followed and becomes an error record, and a broken link named like an image is an
input that fails to read. Hidden files (.DS_Store, ._photo.jpg) are left out and counted.

Class folders are the non-hidden folders directly inside an input folder, empty or not, as in
Keras' image_dataset_from_directory (so the labels match Keras'), unless the config gives a
label map. The output folder is never an input, even inside an input folder. A file name that
is not valid UTF-8 keeps its bytes in its key, escaped (caf\\xe9.jpg). Only regular files are
read (a FIFO or a device named .jpg is an error record, never opened), at most a size derived
from the pixel limit.
"""
import dataclasses
import errno
import functools
import glob as globlib
import io
import json
import os
import posixpath
import stat
import struct
from typing import Optional

import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TFRECORD_HINTS = (".tfrecord", ".tfrecords", ".tfr", ".record")


@dataclasses.dataclass(frozen=True)
class InputRef:
    """One input before it is read: an image file, or a whole TFRecord file."""
    key: str
    path: str
    label: Optional[int] = None


SUPPORTED = "JPEG, PNG, GIF, BMP, WebP and TIFF"


@dataclasses.dataclass
class Discovery:
    kind: str  # "folder" (image files) or "tfrecord"
    refs: list  # InputRef per image file, or per TFRecord file
    label_map: dict  # class folder name -> label ({} without class folders)
    skipped: list  # InputRefs of files that are not images (by extension): errors
    outside_classes: list  # InputRefs of images beside the class folders (become errors)
    loops: list = dataclasses.field(default_factory=list)  # InputRefs of symlink loops (errors)
    hidden: list = dataclasses.field(default_factory=list)  # hidden files left out, relative
    duplicates: list = dataclasses.field(default_factory=list)  # [keys of one real file]
    kinds: Optional[set] = None  # a labelled dataset's kinds of target (pipeline.formats)
    unusable: list = dataclasses.field(default_factory=list)  # (ref, type, reason, message)
    keypoints: int = 0  # keypoints per object, where a labelled dataset's format says
    keypoint_flip: tuple = ()  # its own left/right pairs of keypoints (formats.Listing)

    @property
    def label_names(self):
        """The class names in label order."""
        return sorted(self.label_map, key=self.label_map.get)

    @property
    def rejected(self):
        """(InputRef, error type, reason, message) of what was found but cannot be an input:
        each becomes one error record, so it counts as discovered and errored."""
        return ([(ref, "ValueError", "image beside the class folders", "image is beside the "
                  "class folders, not inside one; it has no label")
                 for ref in self.outside_classes]
                + [(ref, "OSError", "symbolic link loop", f"symbolic link loop: "
                    f"{printable(ref.path)} points to {printable(os.path.realpath(ref.path))}, "
                    "a folder above it; not followed")
                   for ref in self.loops]
                + [(ref, "ValueError", "unsupported format", f"unsupported format: "
                    f"{printable(ref.path)} (augbatch reads {SUPPORTED} files)")
                   for ref in self.skipped]
                + list(self.unusable))


def printable(text):
    """`text`, with the bytes of a file name that is not valid UTF-8 (which Python holds as
    lone surrogates) escaped as \\xNN: such a key or path can be written to records and JSON
    and still says which bytes the name has. Valid names are unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_glob(path):
    return globlib.has_magic(path)


def _match(pattern):
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _slashes(path):
    """`path` with '/' separators. Only on Windows is a backslash a separator: elsewhere it is
    a character of a file name (x\\..\\evil.jpg is one file, not a way up)."""
    return path.replace("\\", "/") if os.sep == "\\" else path


def _base_dir(pattern):
    """The directory keys are relative to: the part of a glob before its first wildcard."""
    parts = _slashes(pattern).split("/")
    for i, part in enumerate(parts):
        if globlib.has_magic(part):
            return "/".join(parts[:i])
    return posixpath.dirname(_slashes(pattern))


def _relative(path, base):
    path, base = _slashes(path), _slashes(base).rstrip("/")
    return path[len(base) + 1:] if base and path.startswith(base + "/") else path


def _hidden(relative_path):
    return any(part.startswith(".") for part in relative_path.split("/"))


def _is_image(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def is_local(path):
    return "://" not in path


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@dataclasses.dataclass
class _Found:
    """What one --input path or glob lists."""
    base: str  # the folder keys are relative to
    files: list
    is_folder: bool
    loops: list = dataclasses.field(default_factory=list)
    classes: Optional[list] = None  # the class folders of a local folder (None: from files)
    linked: set = dataclasses.field(default_factory=set)  # files reached through a link

    # Discovery and every format's detect() ask for these: computed once, once listed (for
    # 100,000 files each pass over them took ~0.3 s).
    @functools.cached_property
    def relative(self):
        """(file, its path relative to `base`) for each file."""
        return [(f, _relative(f, self.base)) for f in self.files]

    @functools.cached_property
    def visible(self):
        """`relative` without hidden files (a part of the path starting with a dot)."""
        return [(f, r) for f, r in self.relative if not _hidden(r)]


def _walk_local(folder, output):
    """A local folder's files, sorted: symlinked folders are followed, except a link to a
    folder above it (a loop), listed in `loops` instead, and the output folder (`output`, a
    real path), never read. Broken links are files (reading them tells why they fail)."""
    found = _Found(folder, [], True, [], [])

    def visit(directory, above, top, linked):
        with os.scandir(directory) as entries:
            for entry in entries:
                through_link = linked or entry.is_symlink()
                if not os.path.isdir(entry.path):  # follows links; False for broken ones
                    found.files.append(entry.path)
                    if through_link:
                        found.linked.add(entry.path)
                    continue
                real = os.path.realpath(entry.path)
                if real == output:
                    continue  # an output folder inside the input: never our own input
                if real in above:
                    found.loops.append(entry.path)
                    continue
                if top and not entry.name.startswith("."):
                    found.classes.append(entry.name)
                visit(entry.path, above | {real}, False, through_link)

    visit(folder, {os.path.realpath(folder)}, True, False)
    found.files.sort()
    found.loops.sort()
    found.classes.sort()
    return found


def _expand_inputs(job):
    """A _Found for every --input path or glob; a folder lists recursively. Nothing in the
    output folder is listed."""
    output = job.output.rstrip("/") or job.output
    local_output = os.path.realpath(output) if is_local(output) else None
    found = []
    for pattern in job.input:
        folder = pattern.rstrip("/") or pattern
        if is_local(folder) and local_output and not _is_glob(folder) and _inside(
                os.path.realpath(folder), local_output):
            raise UserError(f"{job.input_from} {pattern} is the output folder {output} or "
                            "inside it",
                            hint="write the output somewhere else")
        if _is_glob(pattern):
            files = [f for f in _match(pattern) if not _inside(
                os.path.realpath(f) if local_output and is_local(f) else f,
                local_output or output)]
            if not files:
                raise UserError(f"{job.input_from} {pattern}: the pattern matches no file",
                                hint="check the pattern; quote it so the shell does not "
                                     "expand it")
            found.append(_Found(_base_dir(pattern), files, False))
            continue
        if is_local(folder) and os.path.isdir(folder):
            listed = _walk_local(folder, local_output)
            if not listed.files and not listed.loops:
                raise UserError(f"{job.input_from} {pattern}: the folder holds no file")
            found.append(listed)
            continue
        files = [f for f in _match(folder + "/**") if not _inside(f, output)]
        if files:
            found.append(_Found(folder, files, True))
        elif FileSystems.exists(pattern):
            found.append(_Found(posixpath.dirname(_slashes(pattern)), [pattern], False))
        else:
            raise UserError(f"{job.input_from} {pattern}: no such file or folder",
                            hint="give a folder of images (class subfolders become labels), "
                                 "TFRecord files, or a quoted glob like 'data/*.tfrecord'")
    return found


def missing(patterns):
    """The paths and globs among `patterns` that name nothing (validate warns of them; expand
    refuses them)."""
    return [p for p in patterns
            if not (_match(p) if _is_glob(p) else FileSystems.exists(p.rstrip("/") or p))]


def _ref(path, base, label=None, relative=None):
    """`relative`: the path relative to `base`, if known already."""
    relative = _relative(path, base) if relative is None else relative
    return InputRef(key=printable(relative), path=path, label=label)


def discover(job):
    """List the inputs of `job` (deterministic order) and decide their kind and labels."""
    found = _expand_inputs(job)
    all_files = [f for item in found for f in item.files]
    loops = [_ref(link, item.base) for item in found for link in item.loops]
    hidden = sorted(printable(r) for item in found if item.is_folder
                    for f, r in item.relative if _hidden(r))
    kind = job.input_kind
    from pipeline import formats
    if kind == "auto":
        kind = formats.detect(found) or "auto"
    if kind in formats.READERS:  # a labelled dataset (COCO, YOLO, VOC, mask pairs, manifest)
        listing = formats.discover(kind, job, found)
        _check_unique(listing.refs + [r for r, *_ in listing.rejected] + loops)
        return Discovery(kind, listing.refs, listing.label_map, [], [], loops, hidden,
                         kinds=listing.kinds, unusable=listing.rejected,
                         keypoints=listing.keypoints, keypoint_flip=listing.keypoint_flip)
    if kind == "auto":  # TFRecords: files named so, and no image among them
        kind = "tfrecord" if (not any(_is_image(f) for f in all_files) and any(
            h in f.lower() for f in all_files for h in TFRECORD_HINTS)) else "folder"
    if kind == "tfrecord":
        refs = [_ref(f, item.base, relative=r) for item in found
                for f, r in (item.visible if item.is_folder else item.relative)]
        _check_unique(refs + loops)
        return Discovery("tfrecord", refs, {}, [], [], loops, hidden)

    visible, classes = [], set()
    for item in found:
        files = item.visible if item.is_folder else item.relative
        if item.is_folder:
            # Every class folder counts, empty or not, as for Keras' image_dataset_from_directory.
            classes |= (set(item.classes) if item.classes is not None
                        else {r.split("/")[0] for _, r in files if "/" in r})
        visible += [(f, r, item) for f, r in files]
    label_map = _labels(job, classes)
    refs, skipped, outside = [], [], []
    for f, r, item in visible:
        folder = printable(r.split("/")[0]) if "/" in r else None
        if not _is_image(f):
            skipped.append(_ref(f, item.base, relative=r))
        elif label_map and folder not in label_map:
            outside.append(_ref(f, item.base, relative=r))
        else:
            refs.append(_ref(f, item.base, label_map[folder] if label_map else None, r))
    _check_unique(refs + outside + loops + skipped)
    return Discovery("folder", refs, label_map, skipped, outside, loops, hidden,
                     _duplicates(refs, found))


def _labels(job, classes):
    """Class folder name -> label: the config's label map, else the sorted names."""
    names = {printable(name) for name in classes}
    if not job.label_map:
        return {name: i for i, name in enumerate(sorted(names))}
    label_map = dict(job.label_map)
    unknown = sorted(names - set(label_map))
    if unknown:
        raise UserError(f"class folder{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(n) for n in unknown[:10])} not in the config's "
                        "input.labels", hint="add them to input.labels, or remove the folders")
    return label_map


def _duplicates(refs, found):
    """Keys of the same file reached twice (a folder linked twice, overlapping inputs):
    [[key, key, ...]] by real path."""
    linked = set().union(*(item.linked for item in found)) if found else set()
    by_file = {}
    for ref in refs:
        if is_local(ref.path):
            real = os.path.realpath(ref.path) if ref.path in linked else os.path.abspath(ref.path)
            by_file.setdefault(real, []).append(ref.key)
    return sorted(keys for keys in by_file.values() if len(keys) > 1)


def _check_unique(refs):
    seen = {}
    for ref in refs:
        if ref.key in seen:
            raise UserError(f"two inputs have the same key '{ref.key}': "
                            f"{printable(seen[ref.key])} and {printable(ref.path)}",
                            hint="pass inputs whose paths relative to their folders differ")
        seen[ref.key] = ref.path


# --- reading -----------------------------------------------------------------------------------

class Refused(OSError):
    """A file that is not read at all: not a regular file, or larger than the limit."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def max_file_bytes(max_pixels):
    """The largest image file read: 8 bytes per allowed pixel (RGBA at 16 bits, stored raw) and
    1 MB of headers and metadata. A larger file cannot hold an allowed image."""
    return 8 * max_pixels + (1 << 20)


def _check_regular(path):
    """Refuse a local path that is not a regular file before opening it: opening a FIFO
    blocks forever, a device (a link to /dev/zero) never ends. -> the local file's size (None
    for other filesystems)."""
    if not is_local(path):
        return None
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        mode = status.st_mode
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
                if stat.S_ISSOCK(mode) else "not a file")
        raise Refused("not a regular file", f"{printable(path)} is {kind}, not a regular "
                      "file; not read")
    return status.st_size


def read_bytes(path, limit=None):
    """The bytes of a regular file, refused unread past `limit` bytes."""
    size = _check_regular(path)
    if limit and size is not None and size > limit:
        raise Refused("file too large", _too_large(path, limit))
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        if not limit:
            data = f.read()
        elif size is None:
            data = f.read(limit + 1)
        else:
            # What the file holds, not a read of the limit: that first takes the limit in
            # memory (hundreds of MB, given back at once: ~30 us and a TLB flush on every core
            # per image). A file that grew since its size was read is read on, to the limit.
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(limit - size)
    if limit and len(data) > limit:
        raise Refused("file too large", _too_large(path, limit))
    return data


def _too_large(path, limit):
    return (f"{printable(path)} is over {limit} bytes, more than an image within max_pixels "
            "can take; not read")


def read_failure(path, exc):
    """(reason, message) for a file that could not be read: names a broken or looping symbolic
    link, which the OS reports only as 'no such file' / 'too many levels of symbolic links'."""
    if isinstance(exc, Refused):
        return exc.reason, str(exc)
    shown = printable(path)
    if is_local(path) and os.path.islink(path):
        if getattr(exc, "errno", None) == errno.ELOOP:
            return "symbolic link loop", f"symbolic link loop: {shown} points back to itself"
        if not os.path.exists(path):
            return "broken symbolic link", (f"broken symbolic link: {shown} points to "
                                            f"{printable(os.readlink(path))}, which does not "
                                            "exist")
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return "cannot read the file", f"cannot read {shown}: {printable(text)}"


class RecordError(Exception):
    """A TFRecord file is damaged at `offset`; the records before it were read."""

    def __init__(self, message, offset):
        super().__init__(f"{message} at byte offset {offset}")
        self.offset = offset


def _masked_crc(data):
    return _mask(google_crc32c.value(data))


def _mask(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _gzipped(path):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read(2) == b"\x1f\x8b"


def open_records(path):
    """A binary stream of the TFRecord file, gunzipped when it is GZIP (detected by magic)."""
    _check_regular(path)
    return FileSystems.open(path, compression_type=(
        CompressionTypes.GZIP if _gzipped(path) else CompressionTypes.UNCOMPRESSED))


def _frames(stream, max_length=None, offset=0):
    """(byte offset, bytes) of each record from `offset` (where `stream` is), checking both
    CRCs; raise RecordError where the file is damaged (the records before it have been
    yielded) or a record is over `max_length`."""
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise RecordError("truncated record header", offset)
        length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
        if _masked_crc(length_bytes) != length_crc:
            raise RecordError("corrupt record length (CRC mismatch)", offset)
        length = struct.unpack("<Q", length_bytes)[0]
        if max_length is not None and length > max_length:
            raise RecordError(f"record of {length} bytes, over the limit of {max_length}",
                              offset)
        data = stream.read(length)  # (its CRC read apart: no second copy of the data)
        data_crc = stream.read(4)
        if len(data) < length or len(data_crc) < 4:
            raise RecordError(f"truncated record (expected {length} bytes)", offset)
        if _masked_crc(data) != struct.unpack("<I", data_crc)[0]:
            raise RecordError("corrupt record data (CRC mismatch)", offset)
        yield offset, data
        offset += 12 + length + 4


def iter_records(stream, max_length=None, offset=0):
    """Yield each record's bytes from byte `offset` (where `stream` is), checking both CRCs;
    raise RecordError where the file is damaged (the records before it have been yielded) or
    a record is over `max_length`."""
    for _, data in _frames(stream, max_length, offset):
        yield data


# --- the inputs' list, for the workers ----------------------------------------------------------
# A run hands its inputs to the pipeline as a file in its temporary folder, read in ranges, not
# inside the pipeline: Beam pickles and bz2-compresses whatever a Create holds, then unpacks it,
# on one core before the first image is read (16,000 image files: ~1.8 s; 20,000 COCO images
# with their annotations: ~7 s; growing with the inputs).

INPUT_LIST = "inputs.jsonl"
LIST_RANGE = 1000  # inputs per range of the list


def write_input_list(folder, refs):
    """`refs` (of one dataclass: InputRef, formats.Ref) one JSON line each in
    folder/INPUT_LIST -> [(path, start, end, their class)]: byte ranges of LIST_RANGE lines
    each, for read_input_list. Their fields are plain data (`listed_form`); raises TypeError
    for a value that is not. (JSON keeps undecodable bytes of a name, which Python holds as
    surrogates, as escapes.)"""
    kinds = {type(ref) for ref in refs}
    if len(kinds) > 1:
        raise TypeError(f"inputs of several kinds: {sorted(k.__name__ for k in kinds)}")
    path = FileSystems.join(folder, INPUT_LIST)
    ranges, offset = [], 0
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for first in range(0, len(refs), LIST_RANGE):
            lines = "".join(
                json.dumps([listed_form(getattr(ref, field.name))
                            for field in dataclasses.fields(ref)]) + "\n"
                for ref in refs[first:first + LIST_RANGE]).encode()
            f.write(lines)
            ranges.append((path, offset, offset + len(lines), type(refs[first])))
            offset += len(lines)
    return ranges


def read_input_list(span):
    """The refs of one (path, start, end, class) range of write_input_list's file."""
    path, start, end, kind = span
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(start)
        lines = f.read(end - start).decode().splitlines()
    for line in lines:
        yield kind(*(from_listed_form(value) for value in json.loads(line)))


def listed_form(value):
    """`value` (an annotation: strings, numbers, None, lists, tuples, dicts of any such keys)
    as JSON that gives it back exactly (from_listed_form): a dict as {"m": [[key, value],
    ...]}, a tuple as {"t": [...]}, so JSON objects are only these two and no key or type is
    lost. No code runs to read it back, whatever the file holds."""
    if value is None or type(value) in (bool, int, float, str):  # (not numpy's, nor enums)
        return value
    if isinstance(value, list):
        return [listed_form(v) for v in value]
    if isinstance(value, tuple):
        return {"t": [listed_form(v) for v in value]}
    if isinstance(value, dict):
        return {"m": [[listed_form(k), listed_form(v)] for k, v in value.items()]}
    raise TypeError(f"{type(value).__name__} in an input's fields: not plain data")


def from_listed_form(value):
    if isinstance(value, list):
        return [from_listed_form(v) for v in value]
    if isinstance(value, dict):
        if "t" in value:
            return tuple(from_listed_form(v) for v in value["t"])
        return {from_listed_form(k): from_listed_form(v) for k, v in value["m"]}
    return value


# A TFRecord file is read in ranges of at most this many records and bytes, each range a
# bundle of its own (on any worker): one large file is not read, decoded and augmented by one
# worker, nor held by one.
RANGE_RECORDS = 64
RANGE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class RecordRange:
    """`count` records of `ref`'s TFRecord file from record `first`, at byte `offset`; None:
    every record to the end of the file."""
    ref: InputRef
    first: int = 0
    offset: int = 0
    count: Optional[int] = None


def record_ranges(ref, max_length=None, records=RANGE_RECORDS, max_bytes=RANGE_BYTES):
    """The ranges to read `ref`'s TFRecord file in, found by framing it once (every CRC
    checked, no record kept). What cannot be framed (a damaged tail) is in the last range,
    read to the end of the file: its reader meets the damage and reports it as a reader of the
    whole file would, so the records and errors are the same however the file is cut. A GZIP
    file (no seeking into it) or one that cannot be opened is one range."""
    first = start = 0
    ranges = []
    try:
        if _gzipped(ref.path):
            return [RecordRange(ref)]
        with open_records(ref.path) as stream:
            for index, (offset, _) in enumerate(_frames(stream, max_length)):
                if index - first == records or offset - start >= max_bytes:
                    ranges.append(RecordRange(ref, first, start, index - first))
                    first, start = index, offset
    except Exception:  # noqa: BLE001 - damage, or unreadable: the last range's reader says so
        pass
    return ranges + [RecordRange(ref, first, start, None)]


def frame_record(data):
    """`data` framed as one TFRecord record (length, CRCs)."""
    return frame_joined((data,))


def frame_joined(parts):
    """One TFRecord record whose data is `parts` (bytes) one after another, in a single join:
    the data's CRC taken part by part, not over a joined copy framed again."""
    crc = 0
    for part in parts:
        crc = google_crc32c.extend(crc, part)
    return b"".join((_frame_head(sum(map(len, parts))), *parts, struct.pack("<I", _mask(crc))))


def frame_parts(data):
    """What goes before and after `data` in its TFRecord record: (length and its CRC, the
    data's CRC); for writing a record without copying it into one bytes object first."""
    return _frame_head(len(data)), struct.pack("<I", _masked_crc(data))


def _frame_head(length):
    """A TFRecord record's length and the length's CRC."""
    length = struct.pack("<Q", length)
    return length + struct.pack("<I", _masked_crc(length))


def records_of(data):
    """The records of an in-memory TFRecord file (bytes), for tests and tools."""
    return list(iter_records(io.BytesIO(data)))
