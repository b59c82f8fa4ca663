"""What a run will write before it runs: how many records, roughly how many bytes, how long.

Records are counted from the inputs discovery found, by the rules the augment step applies
(copies per input with augment.balance, copy 0 with keep_original, the splits that get copies);
inputs that fail to read or decode, and copies the target rules drop, write fewer.

Bytes and time are measured: a few inputs spread evenly over the inputs in key order (always the
same ones) go through the run's own read, decode and augment+encode steps, each with its first
copies (copy c of an input is the same image whatever the number of copies, so these are
records the run writes, byte for byte). The bytes are the sample's per input times the inputs,
or its bytes out per byte in times the inputs' file sizes (inputs of differing sizes), whichever
the sample's own spread says is the tighter; that spread (~95%) is said with the estimate. The
time is this machine's: the sample's read and decode per input and augment+encode per output,
one input after another, times the run's inputs and outputs; a rough single-machine figure
(building the chain, once per worker, is left out; a run overlaps inputs on every core).

The sample is bounded: at most SAMPLE_INPUTS inputs and SAMPLE_COPIES copies each, one copy of
an input over SAMPLE_PIXELS pixels, and no further input once SAMPLE_SECONDS have gone by.
"""
import dataclasses
import gzip
import itertools
import math
import os
import re
import time
import zlib
from typing import Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import balance, progress, sources
from pipeline.errors import UserError

SAMPLE_INPUTS = 8
SAMPLE_COPIES = 4
SAMPLE_PIXELS = 16_000_000  # per input, all its sampled copies together
SAMPLE_SECONDS = 20.0
COUNT_SECONDS = 10.0  # counting TFRecord records; past it the rest is scaled by file size
FRAMING = 16  # a TFRecord record's length, its CRC and the data's CRC
FLOOR = 0.05  # the least uncertainty said of a sample that did not see every output


@dataclasses.dataclass
class Estimate:
    inputs: int  # inputs found (TFRecord: records)
    originals: int  # copy-0 records (keep_original, and inputs of splits not augmented)
    copies: int  # augmented copy records
    exact_count: bool  # False: TFRecord records counted in part, or balance by a sample's labels
    bytes: Optional[int] = None  # None: nothing could be measured
    spread: Optional[float] = None  # relative half-width of a ~95% range; None: unknown
    seconds: Optional[float] = None
    per_output: Optional[float] = None  # seconds per output record in the sample
    sampled: int = 0  # inputs measured
    sampled_copies: int = 0  # copies made of each (at most)
    failed: int = 0  # sampled inputs that failed (they write nothing)
    targets: bool = False  # the sample holds boxes, masks or keypoints (rules may drop copies)
    note: str = ""  # why bytes and time are missing

    @property
    def records(self):
        return self.originals + self.copies

    def lines(self):
        """The dry run's report."""
        count = "" if self.exact_count else "~"
        out = [f"records: {count}{self.records} ({count}{self.inputs} inputs: "
               f"{self.copies} augmented copies + {self.originals} originals; inputs that fail "
               "write none" + (", nor do copies the target rules drop" if self.targets else "")
               + ")"]
        if self.bytes is None:
            return out + [f"bytes, time: not estimated ({self.note})"]
        if self.spread is None:
            how = "the spread is unknown from one input"
        elif self.spread == 0:
            how = "every input and copy measured"
        else:
            how = f"+/-{100 * self.spread:.0f}%"
        copies = (f", {self.sampled_copies} cop{'y' if self.sampled_copies == 1 else 'ies'}"
                  " each" if self.copies else "")
        failed = f"; {self.failed} of them failed" if self.failed else ""
        out.append(f"bytes: ~{size_text(self.bytes)} (from {self.sampled} sampled of "
                   f"{self.inputs} inputs{copies}{failed}; {how})")
        out.append(f"time: ~{progress.duration(self.seconds)} on this machine (a rough "
                   f"single-machine estimate from the sample's {self.per_output:.3f}s per "
                   "output; start-up not included)")
        return out

    def to_dict(self):
        return {"records": self.records, "bytes": self.bytes, "spread": self.spread,
                "seconds": None if self.seconds is None else round(self.seconds, 1),
                "sampled_inputs": self.sampled, "sampled_copies": self.sampled_copies}


# --- sizes -------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(text):
    """'500MB' -> 500000000, '2GiB' -> 2147483648, '1.5G', '1000' (bytes); ValueError."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = found and found.group(2).lower()
    if not found or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 500MB, 2GiB, 1.5G, 1000000)")
    value = int(float(found.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{text!r}: the size must be above 0 bytes")
    return value


def size_text(n):
    """1234567 -> '1.2 MB' (powers of 1000, as parse_size reads MB)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


# --- counting ----------------------------------------------------------------------------------

def outputs_of(job, key, label, split):
    """(augmented copies, copy-0 records) the augment step writes for one input that reads."""
    from pipeline import transforms as T
    if not T.augments(job, split):
        return 0, 1
    return balance.copies_of(job, key, label), int(job.keep_original)


def _count_records(paths):
    """(records, their bytes, exact) of TFRecord files, walking the record headers (a seek past
    each record's data). Past COUNT_SECONDS the walk stops and what it found is scaled by the
    share of the files' bytes it went through (of gzip files: their compressed bytes)."""
    sizes = [sum(m.size_in_bytes for m in found.metadata_list)
             for found in FileSystems.match(list(paths))]
    started, records, payload, walked = time.monotonic(), 0, 0, 0
    for path, size in zip(paths, sizes):
        try:
            sources._check_regular(path)  # (a FIFO would block)
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
                gzipped = raw.read(2) == b"\x1f\x8b"
                raw.seek(0)
                stream = gzip.GzipFile(fileobj=raw) if gzipped else raw
                while len(header := stream.read(12)) == 12:
                    length = int.from_bytes(header[:8], "little")
                    stream.seek(length + 4, os.SEEK_CUR)
                    records, payload = records + 1, payload + length
                    if time.monotonic() - started > COUNT_SECONDS:
                        scale = sum(sizes) / max(1, walked + raw.tell())
                        return round(records * scale), round(payload * scale), False
        except Exception:  # noqa: BLE001 - a damaged file: the run reports it
            pass
        walked += size
    return records, payload, True


# --- the estimate ------------------------------------------------------------------------------

def estimate(job, discovery):
    """The Estimate of `job` (with its balance plan) on what `discovery` found."""
    from pipeline import run
    read = run.read_step(job, discovery)
    if discovery.kind == "tfrecord":
        picked = _spread(discovery.refs, SAMPLE_INPUTS)
        per_file = math.ceil(SAMPLE_INPUTS / max(1, len(picked)))
        sample = [item for ref in picked for item in itertools.islice(read.process(ref),
                                                                       per_file)]
        inputs, total_in, exact = _count_records([ref.path for ref in discovery.refs])
    else:
        sample = [item for ref in _spread(discovery.refs, SAMPLE_INPUTS)
                  for item in read.process(ref)]
        inputs, total_in, exact = (len(discovery.refs),
                                   run._total_bytes(ref.path for ref in discovery.refs), True)
    sample = [_unwrap(item) for item in sample]
    with_targets = any(getattr(item, "targets", None) is not None for item in sample)
    if discovery.kind == "tfrecord":  # labels (for balance) known from the sampled records
        plans = [outputs_of(job, item.key, getattr(item, "label", None), None)
                 for item in sample]
        copies = round(inputs * sum(c for c, _ in plans) / max(1, len(plans)))
        found = Estimate(inputs, inputs * int(job.keep_original), copies,
                         exact and job.balance_plan is None, targets=with_targets)
    else:
        plans = [outputs_of(job, ref.key, ref.label, getattr(ref, "split", None))
                 for ref in discovery.refs]
        found = Estimate(inputs, sum(o for _, o in plans), sum(c for c, _ in plans), True,
                         targets=with_targets)
    if not sample or not total_in:
        found.note = "no input to sample"
        return found
    return _measure(job, found, sample, total_in)


def _unwrap(out):
    """A DoFn's output: the element, whether on the main output or tagged (an error)."""
    return getattr(out, "value", out)


def _spread(items, n):
    """Up to n of `items`, evenly spread over them (the middle of each n-th)."""
    if len(items) <= n:
        return list(items)
    return [items[(2 * i + 1) * len(items) // (2 * n)] for i in range(n)]


def _measure(job, found, sample, total_in):
    """`found` with bytes and time from running `sample` (Inputs or ErrorRecords)."""
    from pipeline import quiet
    from pipeline import transforms as T
    quiet.native_logs_follow_tf_level()
    most = balance.most_copies(job)
    copies = min(SAMPLE_COPIES, most)
    # Every sampled input gets its first copies and copy 0, whatever its split and class.
    splits = {getattr(item, "split", None) for item in sample} - {None}
    measured = dataclasses.replace(job, copies=copies, keep_original=True, balance_plan=None,
                                   augment_splits=tuple(sorted(splits | set(job.augment_splits))))
    decode = T.DecodeImage(job.channels, job.max_pixels, job.exif_orientation)
    decode.setup()
    steps = {}  # copies -> the augment step (building it traces the chain: not timed)

    def augment_step(n):
        if n not in steps:
            steps[n] = T.AugmentAndEncode(dataclasses.replace(measured, copies=n),
                                          job.config_hash)
            steps[n].setup()
        return steps[n]

    # Per sampled input: bytes in, copy-0 bytes, mean bytes of a copy, seconds of its decode,
    # seconds per record its augment+encode made.
    rows, gzipped, started = [], _Gzipped(), time.monotonic()
    for item in sample:
        if rows and time.monotonic() - started > SAMPLE_SECONDS:
            break
        if isinstance(item, T.ErrorRecord):
            rows.append((0, 0, 0, 0, 0))  # (its size unknown: it adds nothing either way)
            found.failed += 1
            continue
        size = len(item.data) + len(item.extra)
        tick = time.monotonic()
        decoded = _unwrap(next(iter(decode.process(item))))
        if not isinstance(decoded, T.Decoded):
            rows.append((size, 0, 0, time.monotonic() - tick, 0))
            found.failed += 1
            continue
        pixels = decoded.image.shape[0] * decoded.image.shape[1]
        step = augment_step(max(min(copies, 1), min(copies, SAMPLE_PIXELS // max(1, pixels))))
        decoding = time.monotonic() - tick
        tick = time.monotonic()
        made = [r for r in map(_unwrap, step.process_now([decoded]))
                if isinstance(r, T.OutputRecord)]
        seconds = time.monotonic() - tick
        if not made:
            rows.append((size, 0, 0, decoding, 0))
            found.failed += 1
            continue
        sizes = {r.copy_index: len(r.payload) + FRAMING for r in made}
        original = sizes.pop(0, 0)
        if job.compression == "gzip":
            for r in made:
                gzipped.add(r.payload)
        rows.append((size, original, sum(sizes.values()) / len(sizes) if sizes else 0,
                     decoding, seconds / len(made)))
        found.sampled_copies = max(found.sampled_copies, len(sizes))
    found.sampled = len(rows)
    # Per input of the whole run: w0 copy-0 records and n copies on average.
    w0, n = found.originals / max(1, found.inputs), found.copies / max(1, found.inputs)
    size_in = [row[0] for row in rows]
    out = [w0 * original + n * copy for _, original, copy, _, _ in rows]
    if not any(out):
        found.note = "every sampled input failed"
        return found
    found.bytes, found.spread = _scaled(size_in, out, found.inputs, total_in)
    if job.compression == "gzip":
        found.bytes = round(found.bytes * gzipped.ratio())
    made = [row[4] for row in rows if row[4]]
    found.per_output = sum(made) / len(made)
    found.seconds = (found.inputs * sum(row[3] for row in rows) / len(rows)
                     + found.records * found.per_output)
    everything = found.sampled >= found.inputs and found.sampled_copies >= most
    if everything and found.exact_count and not found.targets:
        found.spread = 0.0
    elif found.spread is not None:
        found.spread = max(found.spread, FLOOR)
    return found


def _scaled(size_in, out, population, total_in):
    """(estimate of the total, relative half-width of its ~95% range or None) from per-input
    bytes `out` of a sample of `population` inputs: the sample's mean times the inputs, or its
    bytes out per byte in times the inputs' bytes (`size_in`: each sampled input's), whichever
    the sample says is the tighter (inputs of one size: per input; of many: often by size)."""
    k = len(out)
    if k < 2:
        return round(population * out[0]), (None if population > 1 else 0.0)
    finite = max(0.0, 1 - k / population)
    mean = sum(out) / k
    per_input = (round(population * mean), 2 * math.sqrt(finite * _variance(out) / k) / mean)
    if not all(size_in):  # (an input whose size is not known: per input only)
        return per_input
    ratio = sum(out) / sum(size_in)
    residual = _variance([o - ratio * i for i, o in zip(size_in, out)])
    by_size = (round(ratio * total_in),
               2 * math.sqrt(finite * residual / k) / (sum(size_in) / k) / ratio)
    return min(per_input, by_size, key=lambda found: found[1])


def _variance(values):
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


class _Gzipped:
    """How much gzip shrinks the records added (streamed: the sample's records are not kept)."""

    def __init__(self):
        self.packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                                       16 + zlib.MAX_WBITS)
        self.raw = self.packed = 0

    def add(self, payload):
        self.raw += len(payload)
        self.packed += len(self.packer.compress(payload))

    def ratio(self):
        self.packed += len(self.packer.flush())
        return self.packed / self.raw if self.raw else 1.0


def check_limit(found, limit):
    """Refuse a run whose estimate is over --max-output-bytes, before anything is written."""
    if limit is None or found.bytes is None or found.bytes <= limit:
        return
    raise UserError(f"--max-output-bytes {size_text(limit)} ({limit} bytes) refused the run: "
                    f"it would write about {size_text(found.bytes)} ({found.records} records; "
                    f"estimated from {found.sampled} sampled inputs); nothing was written",
                    hint="raise --max-output-bytes, or write fewer copies or smaller images "
                         "(--copies, --quality, a resize in the chain)")
