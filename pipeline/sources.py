"""Finding the inputs (in the driver) and reading them (in DoFns).

Each input gets a stable key: its path relative to the input folder (or to the glob's base
directory), and `file:index` for a record of a TFRecord file. Everything goes through Beam's
FileSystems, so gs://, s3:// and mem:// paths work as local ones do.

Nothing found is dropped silently. A local folder is listed here rather than by Beam, whose
listing skips broken symbolic links and symlinked folders without a word: symlinked folders
are followed (a dataset is often assembled from links), a link back to a folder above it (a
loop) is not followed and becomes an error record, and a broken link named like an image is an
input that fails to read. Hidden files (.DS_Store, ._photo.jpg) are left out and counted.
"""
import dataclasses
import errno
import glob as globlib
import io
import os
import posixpath
import struct
from typing import Optional

import google_crc32c
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TFRECORD_HINTS = (".tfrecord", ".tfrecords", ".tfr", ".record")


@dataclasses.dataclass(frozen=True)
class InputRef:
    """One input before it is read: an image file, or a whole TFRecord file."""
    key: str
    path: str
    label: Optional[int] = None


@dataclasses.dataclass
class Discovery:
    kind: str  # "folder" (image files) or "tfrecord"
    refs: list  # InputRef per image file, or per TFRecord file
    label_names: list
    skipped: list  # files that are not images (by extension), relative paths
    outside_classes: list  # InputRefs of images beside the class folders (become errors)
    loops: list = dataclasses.field(default_factory=list)  # InputRefs of symlink loops (errors)
    hidden: list = dataclasses.field(default_factory=list)  # hidden files left out, relative

    @property
    def rejected(self):
        """(InputRef, error type, reason, message) of what was found but cannot be an input:
        each becomes one error record, so it counts as discovered and errored."""
        return ([(ref, "ValueError", "image beside the class folders", "image is beside the "
                  "class folders, not inside one; it has no label")
                 for ref in self.outside_classes]
                + [(ref, "OSError", "symbolic link loop", f"symbolic link loop: {ref.path} "
                    f"points to {os.path.realpath(ref.path)}, a folder above it; not followed")
                   for ref in self.loops])


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


def _walk_local(folder):
    """(files, loops) under a local folder, sorted: symlinked folders are followed, except a
    link to a folder above it (a loop), which is listed in `loops` instead. Broken links are
    files (reading them tells why they fail)."""
    files, loops = [], []

    def visit(directory, above):
        with os.scandir(directory) as entries:
            for entry in entries:
                if not os.path.isdir(entry.path):  # follows links; False for broken ones
                    files.append(entry.path)
                    continue
                real = os.path.realpath(entry.path)
                if real in above:
                    loops.append(entry.path)
                else:
                    visit(entry.path, above | {real})

    visit(folder, {os.path.realpath(folder)})
    return sorted(files), sorted(loops)


def _expand_inputs(job):
    """[(base dir, [files], is a folder, [symlink loops])] for every --input path or glob; a
    folder lists recursively."""
    found = []
    for pattern in job.input:
        if _is_glob(pattern):
            files = _match(pattern)
            if not files:
                raise UserError(f"{job.input_from} {pattern}: the pattern matches no file",
                                hint="check the pattern; quote it so the shell does not "
                                     "expand it")
            found.append((_base_dir(pattern), files, False, []))
            continue
        folder = pattern.rstrip("/")
        if folder and is_local(folder) and os.path.isdir(folder):
            files, loops = _walk_local(folder)
            if not files and not loops:
                raise UserError(f"{job.input_from} {pattern}: the folder holds no file")
            found.append((folder, files, True, loops))
            continue
        files = _match(folder + "/**") if folder else []
        if files:
            found.append((folder, files, True, []))
        elif FileSystems.exists(pattern):
            found.append((posixpath.dirname(_slashes(pattern)), [pattern], False, []))
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


def discover(job):
    """List the inputs of `job` (deterministic order) and decide their kind and labels."""
    found = _expand_inputs(job)
    all_files = [f for _, files, _, _ in found for f in files]
    loops = [InputRef(key=_relative(link, base), path=link)
             for base, _, _, links in found for link in links]
    hidden = sorted(_relative(f, base) for base, files, is_folder, _ in found if is_folder
                    for f in files if _hidden(_relative(f, base)))
    kind = job.input_kind
    if kind == "auto":
        images = [f for f in all_files if _is_image(f)]
        records = [f for f in all_files if any(h in f.lower() for h in TFRECORD_HINTS)]
        kind = "tfrecord" if records and not images else "folder"
    if kind == "tfrecord":
        refs = [InputRef(key=_relative(f, base), path=f)
                for base, files, is_folder, _ in found for f in files
                if not (is_folder and _hidden(_relative(f, base)))]
        _check_unique(refs + loops)
        return Discovery("tfrecord", refs, [], [], [], loops, hidden)

    refs, skipped, outside, names = [], [], [], set()
    for base, files, is_folder, _ in found:
        relative = [(f, _relative(f, base)) for f in files]
        if is_folder:
            relative = [(f, r) for f, r in relative if not _hidden(r)]
            names |= {r.split("/")[0] for f, r in relative if "/" in r and _is_image(f)}
        for f, r in relative:
            if _is_image(f):
                refs.append((f, r))
            else:
                skipped.append(r)
    label_names = sorted(names)
    label_of = {name: i for i, name in enumerate(label_names)}
    image_refs = []
    for f, r in refs:
        if label_names and "/" not in r:
            outside.append(InputRef(key=r, path=f))
            continue
        image_refs.append(InputRef(key=r, path=f,
                                   label=label_of[r.split("/")[0]] if label_names else None))
    _check_unique(image_refs + outside + loops)
    return Discovery("folder", image_refs, label_names, sorted(skipped), outside, loops, hidden)


def _check_unique(refs):
    seen = {}
    for ref in refs:
        if ref.key in seen:
            raise UserError(f"two inputs have the same key '{ref.key}': {seen[ref.key]} and "
                            f"{ref.path}", hint="pass inputs whose paths relative to their "
                            "folders differ")
        seen[ref.key] = ref.path


# --- reading -----------------------------------------------------------------------------------

def read_bytes(path):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def read_failure(path, exc):
    """(reason, message) for a file that could not be read: names a broken or looping symbolic
    link, which the OS reports only as 'no such file' / 'too many levels of symbolic links'."""
    if is_local(path) and os.path.islink(path):
        if getattr(exc, "errno", None) == errno.ELOOP:
            return "symbolic link loop", f"symbolic link loop: {path} points back to itself"
        if not os.path.exists(path):
            return "broken symbolic link", (f"broken symbolic link: {path} points to "
                                            f"{os.readlink(path)}, which does not exist")
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return "cannot read the file", f"cannot read {path}: {text}"


class RecordError(Exception):
    """A TFRecord file is damaged at `offset`; the records before it were read."""

    def __init__(self, message, offset):
        super().__init__(f"{message} at byte offset {offset}")
        self.offset = offset


def _masked_crc(data):
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def open_records(path):
    """A binary stream of the TFRecord file, gunzipped when it is GZIP (detected by magic)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return FileSystems.open(path, compression_type=(
        CompressionTypes.GZIP if gzipped else CompressionTypes.UNCOMPRESSED))


def iter_records(stream):
    """Yield each record's bytes, checking both CRCs; raise RecordError where the file is
    damaged (the records before it have been yielded)."""
    offset = 0
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
        body = stream.read(length + 4)
        if len(body) < length + 4:
            raise RecordError(f"truncated record (expected {length} bytes)", offset)
        data, data_crc = body[:length], struct.unpack("<I", body[length:])[0]
        if _masked_crc(data) != data_crc:
            raise RecordError("corrupt record data (CRC mismatch)", offset)
        yield data
        offset += 12 + length + 4


def frame_record(data):
    """`data` framed as one TFRecord record (length, CRCs)."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


def records_of(data):
    """The records of an in-memory TFRecord file (bytes), for tests and tools."""
    return list(iter_records(io.BytesIO(data)))
