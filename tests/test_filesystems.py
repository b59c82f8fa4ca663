"""Inputs and outputs on any Beam filesystem: a whole run on an object store, same bytes.

Beam's Python SDK has no in-memory filesystem (Java's mem:// has no Python twin), so this
module registers one through Beam's own plugin mechanism (a FileSystem subclass with scheme
"mem"). It behaves like gs:// and s3:// do: no directories, a "folder" is a key prefix,
listing is by prefix. The DirectRunner runs the DoFns in this process, so they see the same
store. Any open()/os call on a user path, or any reliance on directories, fails here.
"""
import glob
import hashlib
import io
import os

import pytest
from apache_beam.io.filesystem import (BeamIOError, CompressedFile, CompressionTypes,
                                       FileMetadata, FileSystem)
from click.testing import CliRunner

import cli
from tests.conftest import SAMPLE_TFRECORDS, assert_accounted, make_job, run_job, shard_bytes
from pipeline import run, runners
from pipeline.errors import UserError

CHAIN = [{"op": "tf.image.random_flip_left_right"},
         {"op": "tf.image.random_brightness", "max_delta": 0.2}]


class _Download(io.BytesIO):
    mode = "rb"  # CompressedFile asks


class _Upload(io.BytesIO):
    """A file being written: it appears in the store when closed (as an object upload does)."""
    mode = "wb"

    def __init__(self, store, path):
        super().__init__()
        self.store, self.path = store, path

    def close(self):
        if not self.closed:
            self.store[self.path] = self.getvalue()
        super().close()


class MemoryFileSystem(FileSystem):
    """An object store in this process's memory: mem://bucket/key."""

    objects = {}  # path -> bytes

    @classmethod
    def scheme(cls):
        return "mem"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass  # no directories

    def has_dirs(self):
        return False

    def _list(self, prefix):
        for path, data in sorted(self.objects.items()):
            if path.startswith(prefix):
                yield FileMetadata(path, len(data), 0.0)

    def _wrap(self, raw, path, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return raw
        return CompressedFile(raw, compression_type=compression_type)

    def create(self, path, mime_type="application/octet-stream",
               compression_type=CompressionTypes.AUTO):
        return self._wrap(_Upload(self.objects, path), path, compression_type)

    def open(self, path, mime_type="application/octet-stream",
             compression_type=CompressionTypes.AUTO):
        if path not in self.objects:
            raise BeamIOError("Open operation failed",
                              {path: FileNotFoundError(2, "no such object", path)})
        return self._wrap(_Download(self.objects[path]), path, compression_type)

    def copy(self, sources, destinations):
        missing = {s: FileNotFoundError(2, "no such object", s)
                   for s in sources if s not in self.objects}
        if missing:
            raise BeamIOError("Copy operation failed", missing)
        for source, destination in zip(sources, destinations):
            self.objects[destination] = self.objects[source]

    def rename(self, sources, destinations):
        self.copy(sources, destinations)
        for source in sources:
            del self.objects[source]

    def exists(self, path):
        return path in self.objects

    def size(self, path):
        return len(self.objects[path])

    def last_updated(self, path):
        return 0.0

    def checksum(self, path):
        return hashlib.md5(self.objects[path]).hexdigest()

    def metadata(self, path):
        return FileMetadata(path, self.size(path), 0.0)

    def delete(self, paths):
        # As GCSFileSystem: a path ending in "/" deletes the prefix; others delete the match.
        for path in paths:
            if path.endswith("/"):
                doomed = [p for p in self.objects if p.startswith(path)]
            else:
                doomed = [m.path for m in self.match([path])[0].metadata_list]
            for p in doomed:
                del self.objects[p]


@pytest.fixture
def memory():
    MemoryFileSystem.objects.clear()
    yield MemoryFileSystem.objects
    MemoryFileSystem.objects.clear()


def upload(local_dir, remote_dir):
    for path in sorted(glob.glob(os.path.join(local_dir, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                MemoryFileSystem.objects[remote_dir + "/" + os.path.relpath(path, local_dir)
                                         ] = f.read()


def objects_under(prefix):
    return {p[len(prefix) + 1:]: data for p, data in MemoryFileSystem.objects.items()
            if p.startswith(prefix + "/")}


def test_folder_in_and_out_on_an_object_store(small_folder, tmp_path, memory):
    # One bad image too, so errors.jsonl has a line to compare.
    with open(os.path.join(small_folder, "objects", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    local = run_job(small_folder, tmp_path / "local", CHAIN, copies=2, num_shards=3)
    upload(small_folder, "mem://bucket/in")
    remote = run_job("mem://bucket/in", "mem://bucket/out", CHAIN, copies=2, num_shards=3)

    assert_accounted(remote)
    assert remote["counts"] == local["counts"]
    assert remote["counts"]["errored"] == 1
    written = objects_under("mem://bucket/out")
    assert sorted(written) == sorted(os.listdir(tmp_path / "local")), "no temp files left"
    shards = {name: data for name, data in written.items() if ".tfrecord" in name}
    assert len(shards) == 3
    assert shards == shard_bytes(tmp_path / "local")
    with open(tmp_path / "local" / "errors.jsonl", "rb") as f:
        assert written["errors.jsonl"] == f.read().replace(
            str(small_folder).encode(), b"mem://bucket/in")

    # A second run into the same place: refused, then --overwrite replaces our files, and
    # refuses while a file augbatch did not write is there.
    with pytest.raises(UserError, match="not empty"):
        run_job("mem://bucket/in", "mem://bucket/out", CHAIN, copies=2, num_shards=3)
    MemoryFileSystem.objects["mem://bucket/out/notes.txt"] = b"not ours"
    with pytest.raises(UserError, match="augbatch did not write: notes.txt"):
        run.run_expand(make_job("mem://bucket/in", "mem://bucket/out", CHAIN, copies=2,
                                num_shards=3), overwrite=True)
    assert MemoryFileSystem.objects.pop("mem://bucket/out/notes.txt") == b"not ours"
    assert sorted(objects_under("mem://bucket/out")) == sorted(written)
    again = run.run_expand(make_job("mem://bucket/in", "mem://bucket/out", CHAIN, copies=2,
                                    num_shards=3), overwrite=True)
    assert again["counts"] == local["counts"]
    now = objects_under("mem://bucket/out")
    assert sorted(now) == sorted(written)  # manifest.json differs in its timings
    assert {n: d for n, d in now.items() if n != "manifest.json"} == \
        {n: d for n, d in written.items() if n != "manifest.json"}


def test_tfrecords_in_gzip_shards_out_on_an_object_store(tmp_path, memory):
    local = run_job(SAMPLE_TFRECORDS, tmp_path / "local", CHAIN, copies=1, num_shards=2,
                    compression="gzip")
    upload(SAMPLE_TFRECORDS, "mem://bucket/records")
    remote = run_job("mem://bucket/records/*.tfrecord", "mem://bucket/out", CHAIN, copies=1,
                     num_shards=2, compression="gzip")
    assert remote["counts"] == local["counts"]
    shards = {n: d for n, d in objects_under("mem://bucket/out").items() if ".tfrecord" in n}
    assert sorted(shards) == ["augmented-00000-of-00002.tfrecord.gz",
                              "augmented-00001-of-00002.tfrecord.gz"]
    assert shards == shard_bytes(tmp_path / "local")


def test_a_scheme_without_a_filesystem_is_a_user_error(small_folder, tmp_path):
    with pytest.raises(UserError, match="no Beam filesystem for nosuchfs://"):
        runners.check_filesystems([small_folder, "nosuchfs://bucket/out"])
    result = CliRunner().invoke(cli.main, [
        "expand", "-i", small_folder, "-o", "nosuchfs://bucket/out", "--copies", "1",
        "--plain-copies"])
    assert result.exit_code == 2, result.output
    assert "no Beam filesystem for nosuchfs://" in result.output
