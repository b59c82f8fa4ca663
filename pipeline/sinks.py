"""The deterministic shard writer (after TFDS's writer).

A record's shard and its place in the shard are a pure function of (key, copy index): a salted
hash picks the shard, records sit in hash order (a shuffle a model can train on directly).
Workers append records (framed as the shard will hold them) to per-bundle bucket files in a
temporary folder, one per shard and slice of the hash order; one step per shard gathers the
buckets Beam committed, sorts them a slice at a time, and writes the shard in the temporary
folder (a retry writes it again); the run moves the shards to their final names once it is
done. So the bytes do not depend on bundles, batches, workers, runners or retries, and a crash
never leaves a shard under a final name.
"""
import collections
import concurrent.futures
import hashlib
import json
import os
import posixpath
import struct
import threading
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from pipeline import sources

TMP_DIR = ".augbatch-tmp"
# The shards a worker writes at once hold together about this many bytes of records while
# they sort them (memory, whatever their size): a slice of a shard larger than a writer's
# share is cut into parts, and its bucket files are read once per part.
SORT_BYTES = 64 << 20
# Bucket files per shard and bundle, each a slice of the hash order: a shard a little under
# the planned size (run.SHARD_TARGET_BYTES, 128 MB; bucket entries add their key) sorts in
# one pass over its buckets when it is the only one a worker writes at once.
SLICES = 4
# Shards a worker writes at once, at most (file reads and writes and CRCs release the GIL);
# together they hold about SORT_BYTES of records.
PARALLEL_SHARDS = 4
# A shard is written in pieces of about this size: one more copy of each record, far fewer
# calls into the file (each, for a local file, a system call or two).
WRITE_BYTES = 1 << 20
# A bucket entry: order hash, has a label, label, copy index, key length; then the key and the
# framed record. BUCKET_FORMAT names this layout: a resumed run reads only buckets of its own.
_HEADER = struct.Struct("<8s?qiI")
BUCKET_FORMAT = 2
# A bundle that runs longer than this many seconds (on one local worker, a run is one bundle)
# commits what it has written at the next batch's end, and goes on in new buckets: a run
# stopped then keeps that work, for --resume. COMMIT_ENV overrides it.
COMMIT_SECONDS = 30.0
COMMIT_ENV = "AUGBATCH_COMMIT_INTERVAL"
# The temporary folders of runs stopped in this process, and the lock that makes a stop and a
# commit one before the other (reentrant: a signal may stop the run inside a commit on the
# thread that then counts what was kept).
_stopped_dirs, _commit_lock = set(), threading.RLock()


def stop_writing(tmp_dir, stopped=True):
    """Once this returns, no worker thread of this process opens a bucket or commits a bundle
    in `tmp_dir` (stopped=False: they may again, for a new run): what is committed then is
    what a stopped run keeps, and what it says it keeps."""
    with _commit_lock:
        (_stopped_dirs.add if stopped else _stopped_dirs.discard)(tmp_dir)


def order_hash(key, copy_index):
    return hashlib.blake2b(f"{key}\x00{copy_index}".encode(), digest_size=8,
                           person=b"augbatch-shard").digest()


def shard_of(order, num_shards):
    """The shard of the record whose order hash (or bucket entry) is `order`."""
    return int.from_bytes(order[:8], "big") % num_shards


def part_of(order, parts):
    """Which of `parts` equal ranges of the hash order `order` (8 bytes, or a bucket entry)
    falls in; slice j cut in k parts gives parts j * k ... j * k + k - 1 of SLICES * k."""
    return (int.from_bytes(order[:8], "big") * parts) >> 64


def split_shards(num_shards):
    """[(split, first shard, shards)]: `num_shards` is a count (one group, no split) or, for a
    dataset with splits, ((split, count), ...): each split has its own shards, numbered
    after the previous split's in the pipeline and named by split."""
    if isinstance(num_shards, int):
        return [(None, 0, num_shards)]
    groups, first = [], 0
    for split, count in num_shards:
        groups.append((split, first, count))
        first += count
    return groups


def total_shards(num_shards):
    return sum(count for _, _, count in split_shards(num_shards))


def shard_names(prefix, num_shards, compression):
    """Every shard's file name, in shard order (`num_shards` as split_shards takes it)."""
    if not isinstance(num_shards, int):  # (from a lock file's JSON: lists)
        num_shards = tuple((split, int(count)) for split, count in num_shards)
    return [shard_name(f"{prefix}-{split}" if split else prefix, i, count, compression)
            for split, _, count in split_shards(int(num_shards) if isinstance(num_shards, int)
                                                else num_shards)
            for i in range(count)]


def shard_name(prefix, index, num_shards, compression):
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


def _framed_bucket_entry(record, order):
    """The record's place (`order`: its order hash) and label, then its TFRecord record as the
    shard will hold it, framed as one record of the bucket file: the TFRecord framing is done
    here, where the Beam thread mostly waits on TensorFlow, not in the shard writer, which
    runs alone at the end of a run."""
    key = record.key.encode()
    head, tail = sources.frame_parts(record.payload)
    return sources.frame_joined((_HEADER.pack(order, record.label is not None, record.label or 0,
                                              record.copy_index, len(key)),
                                 key, head, record.payload, tail))


def _parse_entry(entry):
    """-> ((order hash, key, copy index), label, the framed record: a view, not a copy)."""
    order, has_label, label, copy_index, key_length = _HEADER.unpack_from(entry)
    start = _HEADER.size
    key = entry[start:start + key_length].decode()
    return ((order, key, copy_index), (label if has_label else None),
            memoryview(entry)[start + key_length:])


class WriteBuckets(beam.DoFn):
    """OutputRecord -> appended to this bundle's bucket file for its shard and slice; emits
    (shard, (slice, bucket path)) for each bucket when the bundle finishes.

    A finished bundle's buckets are then committed by a journal file naming them and the keys
    they hold (every output of an input is in one bundle: the augment step makes them all at
    once, fused with this one): `expand --resume` reuses exactly the journaled work. A bundle
    longer than COMMIT_SECONDS commits at a batch's end (all the outputs of every input before
    it written) and goes on in new buckets."""

    def __init__(self, tmp_dir, num_shards):
        self.tmp_dir = tmp_dir
        self.groups = {split: (first, count) for split, first, count in split_shards(num_shards)}

    def setup(self):
        try:
            self.interval = float(os.environ.get(COMMIT_ENV, COMMIT_SECONDS))
        except ValueError:
            self.interval = COMMIT_SECONDS

    def start_bundle(self):
        self.files, self.keys, self.bundle = {}, set(), uuid.uuid4().hex
        self.commit_at = time.monotonic() + self.interval

    def process(self, record):
        self.keys.add(record.key)
        order = order_hash(record.key, record.copy_index)
        first, count = (self.groups[record.split] if len(self.groups) > 1
                        else next(iter(self.groups.values())))
        bucket = (first + shard_of(order, count), part_of(order, SLICES))
        if bucket not in self.files:
            path = FileSystems.join(self.tmp_dir, "bucket-%05d-%d-%s" % (*bucket, self.bundle))
            with _commit_lock:
                if self.tmp_dir not in _stopped_dirs:  # (else its folder may be deleted)
                    self.files[bucket] = (path, FileSystems.create(
                        path, compression_type=CompressionTypes.UNCOMPRESSED))
        if bucket in self.files:
            self.files[bucket][1].write(_framed_bucket_entry(record, order))
        if record.ends_batch and time.monotonic() >= self.commit_at:
            committed = list(self.finish_bundle())
            self.start_bundle()  # (the rest of the bundle in new buckets)
            return committed

    def finish_bundle(self):
        buckets = []
        for (shard, index), (path, f) in sorted(self.files.items()):
            f.close()
            buckets.append((shard, index, path))
        if buckets:
            journal = FileSystems.join(self.tmp_dir, f"done-{self.bundle}.json")
            with _commit_lock:
                if self.tmp_dir in _stopped_dirs:  # the run stopped: this bundle is not kept
                    buckets = []
                else:
                    with FileSystems.create(journal + ".part") as f:
                        f.write(json.dumps({"keys": sorted(self.keys), "buckets": [
                            [shard, index, posixpath.basename(path)]
                            for shard, index, path in buckets]}).encode())
                    FileSystems.rename([journal + ".part"], [journal])  # the commit
        for shard, index, path in buckets:
            yield GlobalWindows.windowed_value((shard, (index, path)))
        self.files, self.keys = {}, set()


def read_journals(tmp_dir):
    """What an interrupted run committed in `tmp_dir`: (the keys whose outputs are all there,
    [(shard, (slice, bucket path))], the journal and bucket names to keep)."""
    done, buckets, keep = set(), [], set()
    journals = FileSystems.match([FileSystems.join(tmp_dir, "done-*.json")])[0].metadata_list
    for m in sorted(journals, key=lambda m: m.path):
        with FileSystems.open(m.path) as f:
            journal = json.loads(f.read())
        keys = set(journal["keys"])
        if keys & done:  # a retried bundle's second commit: the first one counts
            continue
        done |= keys
        keep.add(posixpath.basename(m.path))
        for shard, index, name in journal["buckets"]:
            buckets.append((shard, (index, FileSystems.join(tmp_dir, name))))
            keep.add(name)
    return done, buckets, keep


class WriteShard(beam.DoFn):
    """(shard, [(slice, bucket path)]) -> the final shard file; emits the shard's counts. The
    shards of a bundle are written side by side, a few at a time."""

    def __init__(self, output_dir, tmp_dir, num_shards, prefix, compression):
        self.output_dir, self.tmp_dir = output_dir, tmp_dir
        self.num_shards, self.prefix, self.compression = num_shards, prefix, compression

    def setup(self):
        # (a run of one shard has one writer: it gets the whole of SORT_BYTES)
        self.writers = min(PARALLEL_SHARDS, os.cpu_count() or 1, total_shards(self.num_shards))
        self.pool = concurrent.futures.ThreadPoolExecutor(self.writers,
                                                          thread_name_prefix="write-shard")

    def teardown(self):
        self.pool.shutdown()

    def start_bundle(self):
        self.pending = []

    def process(self, shard_and_buckets):
        self.pending.append(self.pool.submit(self._write, *shard_and_buckets))

    def finish_bundle(self):
        for future in self.pending:
            yield GlobalWindows.windowed_value(future.result())
        self.pending = []

    def _write(self, shard, buckets):
        name = shard_names(self.prefix, self.num_shards, self.compression)[shard]
        split = next(split for split, first, count in split_shards(self.num_shards)
                     if first <= shard < first + count)
        staging = FileSystems.join(self.tmp_dir, name)
        compression = (CompressionTypes.GZIP if self.compression == "gzip"
                       else CompressionTypes.UNCOMPRESSED)
        labels, copies, records = collections.Counter(), collections.Counter(), 0
        with FileSystems.create(staging, compression_type=compression) as f:
            pieces, size = [], 0
            for paths, parts, part in self._parts(buckets):
                entries = sorted(self._entries(paths, parts, part), key=lambda e: e[0])
                for before, after in zip(entries, entries[1:]):
                    if before[0] == after[0]:
                        raise ValueError(f"duplicate output record: key {after[0][1]!r} "
                                         f"copy {after[0][2]}")
                for (_, _, copy_index), label, framed in entries:
                    pieces.append(framed)
                    size += len(framed)
                    if size >= WRITE_BYTES:
                        f.write(b"".join(pieces))
                        pieces, size = [], 0
                    labels[str(label)] += 1
                    copies[str(copy_index)] += 1
                records += len(entries)
                del entries  # (before the next part is read: one part in memory at a time)
            f.write(b"".join(pieces))
        return {"shard": name, "records": records, "labels": dict(labels),
                "copies": dict(copies), "split": split}

    def _parts(self, buckets):
        """(bucket paths, parts, part) for each part of the shard's hash order, in order. A
        part is a slice, or a cut of one whose buckets hold more than this writer's share of
        SORT_BYTES (a shard larger than planned, or several written at once): each is read
        from its slice's files front to back (no seeks: fine on object stores too), so memory
        holds about SORT_BYTES of images whatever the shards."""
        buckets = sorted(b for b in buckets if b is not None)
        matched = FileSystems.match([path for _, path in buckets])
        by_slice = collections.defaultdict(list)
        for (index, path), result in zip(buckets, matched):
            by_slice[index].append((path, sum(m.size_in_bytes for m in result.metadata_list)))
        budget = max(1, SORT_BYTES // self.writers)
        for index in range(SLICES):
            members = by_slice.get(index, [])
            parts = max(1, -(-sum(size for _, size in members) // budget))
            for part in range(index * parts, (index + 1) * parts):
                yield [path for path, _ in members], SLICES * parts, part

    @staticmethod
    def _entries(paths, parts, part):
        """The bucket entries in part `part` of `parts` of the hash order, parsed."""
        for path in paths:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                for entry in sources.iter_records(f):
                    if part_of(entry, parts) == part:
                        yield _parse_entry(entry)


class WriteShards(beam.PTransform):
    """PCollection of OutputRecord -> shard files in tmp_dir, named for output_dir (the run
    moves them there when it is done); output: one dict per shard."""

    def __init__(self, output_dir, tmp_dir, num_shards, prefix, compression, resumed=()):
        super().__init__()
        self.args = (output_dir, tmp_dir, num_shards, prefix, compression)
        self.resumed = list(resumed)

    def expand(self, records):
        output_dir, tmp_dir, num_shards, prefix, compression = self.args
        buckets = records | "WriteBuckets" >> beam.ParDo(WriteBuckets(tmp_dir, num_shards))
        # Every shard gets a file, even one no record hashed to; the buckets an interrupted
        # run committed (--resume) join the new ones.
        every_shard = (records.pipeline | "ShardIds" >> beam.Create(
            [(i, None) for i in range(total_shards(num_shards))] + self.resumed,
            reshuffle=False))  # (the shards are grouped next: that spreads them)
        return ((buckets, every_shard) | "AllBuckets" >> beam.Flatten()
                | "GroupByShard" >> beam.GroupByKey()
                | "WriteShard" >> beam.ParDo(WriteShard(*self.args)))
