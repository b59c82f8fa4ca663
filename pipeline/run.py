"""Wires one `expand` job: discover -> read -> decode -> augment+encode -> shards + manifest.

`run_expand` is the one entry the CLI, the tests and the benchmark call.
"""
import collections
import json
import logging
import math
import platform
import time
from importlib import metadata

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import __version__, progress, sinks, sources
from pipeline import transforms as T
from pipeline.errors import UserError
from pipeline.example import FEATURE_KEYS

log = logging.getLogger("augbatch")
SHARD_TARGET_BYTES = 128 << 20
OWN_FILES = ("manifest.json", "errors.jsonl")


# --- the output directory ----------------------------------------------------------------------

def _own_files(output, prefix):
    """Files in `output` that an earlier run of ours wrote (only these --overwrite deletes)."""
    listing = FileSystems.match([FileSystems.join(output, "**")])[0].metadata_list
    ours = []
    for m in listing:
        name = m.path[len(output.rstrip("/")) + 1:]
        if (name in OWN_FILES or name.startswith(sinks.TMP_DIR + "/")
                or (name.startswith(prefix + "-") and ".tfrecord" in name and "/" not in name)):
            ours.append(m.path)
    return [m.path for m in listing], ours


def prepare_output(output, prefix, overwrite):
    """Refuse a non-empty output dir unless `overwrite`; then delete only our own files."""
    present, ours = _own_files(output, prefix)
    if present and not overwrite:
        raise UserError(f"output directory {output} is not empty ({len(present)} files)",
                        hint="pass --overwrite to replace an earlier run's output, or choose "
                             "another --output")
    if ours:
        FileSystems.delete(ours)
    foreign = sorted(set(present) - set(ours))
    if foreign:
        log.warning("--overwrite keeps %d files augbatch did not write in %s, e.g. %s",
                    len(foreign), output, foreign[0])
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)


def pick_num_shards(job, discovery):
    if job.num_shards:
        return job.num_shards
    sizes = FileSystems.match([ref.path for ref in discovery.refs]) if discovery.refs else []
    total = sum(m.size_in_bytes for r in sizes for m in r.metadata_list)
    outputs_per_input = job.copies + (1 if job.keep_original else 0)
    return max(1, min(10_000, math.ceil(total * outputs_per_input / SHARD_TARGET_BYTES)))


# --- the pipeline ------------------------------------------------------------------------------

def beam_options(beam_args):
    """Beam options from the pass-through args; the DirectRunner unless a runner is named
    (Beam's own default may be a runner that downloads a binary)."""
    options = PipelineOptions(list(beam_args))
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    return options


def build_pipeline(p, job, discovery, num_shards, tmp_dir, config_hash):
    """Add the whole job to pipeline `p`. The summary lands in tmp_dir/summary.json."""
    refs = p | "Inputs" >> beam.Create(discovery.refs) | "Spread" >> beam.Reshuffle()
    if discovery.kind == "folder":
        read = refs | "Read" >> beam.ParDo(T.ReadImageFile(discovery.label_names)).with_outputs(
            T.ERRORS, main="inputs")
    else:
        read = refs | "Read" >> beam.ParDo(T.ReadTFRecordFile(
            job.image_feature, job.label_feature)).with_outputs(T.ERRORS, main="inputs")
    outside = p | "BesideClasses" >> beam.Create([T.ErrorRecord(
        ref.key, ref.path, None, "read", "ValueError",
        "image is beside the class folders, not inside one; it has no label")
        for ref in discovery.outside_classes])
    inputs = read.inputs
    if discovery.kind == "tfrecord":
        inputs = inputs | "SpreadRecords" >> beam.Reshuffle()
    decoded = inputs | "Decode" >> beam.ParDo(T.DecodeImage(
        job.channels, job.max_pixels)).with_outputs(T.ERRORS, main="images")
    per_batch = max(1, job.batch_size // max(1, job.copies))
    augmented = (decoded.images
                 | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=per_batch)
                 | "AugmentEncode" >> beam.ParDo(T.AugmentAndEncode(job, config_hash))
                 .with_outputs(T.ERRORS, main="records"))
    shard_stats = augmented.records | "Write" >> sinks.WriteShards(
        job.output, tmp_dir, num_shards, job.prefix, job.compression)

    errors = ((read[T.ERRORS], outside, decoded[T.ERRORS], augmented[T.ERRORS])
              | "AllErrors" >> beam.Flatten())
    discovered = ((read.inputs | "Seen" >> beam.Map(lambda _: 1)),
                  (read[T.ERRORS] | "SeenBad" >> beam.Map(lambda _: 1)),
                  (outside | "SeenOutside" >> beam.Map(lambda _: 1))) | "AllSeen" >> beam.Flatten()
    count = discovered | "CountSeen" >> beam.combiners.Count.Globally()
    (p | "Once" >> beam.Create([None])
     | "Summary" >> beam.Map(_write_summary, job.output, tmp_dir,
                             beam.pvalue.AsList(shard_stats), beam.pvalue.AsList(errors),
                             beam.pvalue.AsSingleton(count)))


def _write_summary(_, output, tmp_dir, shard_stats, errors, discovered):
    """Runs once, after every shard is written: errors.jsonl (sorted) and the counts."""
    errors = sorted(errors, key=lambda e: (e.key, e.stage))
    staging = FileSystems.join(tmp_dir, "errors.jsonl")
    with FileSystems.create(staging) as f:
        for e in errors:
            f.write((json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n").encode())
    final = FileSystems.join(output, "errors.jsonl")
    if FileSystems.exists(final):
        FileSystems.delete([final])
    FileSystems.rename([staging], [final])
    summary = {"discovered": discovered, "shards": sorted(shard_stats, key=lambda s: s["shard"]),
               "errors_by_stage": dict(collections.Counter(e.stage for e in errors)),
               "errored": len({e.key for e in errors})}
    with FileSystems.create(FileSystems.join(tmp_dir, "summary.json")) as f:
        f.write(json.dumps(summary).encode())


# --- the run -----------------------------------------------------------------------------------

def versions():
    out = {"augbatch": __version__, "python": platform.python_version()}
    for dist in ("tensorflow", "tensorflow-addons", "keras", "apache-beam", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def check_crc():
    import google_crc32c
    if google_crc32c.implementation != "c":
        log.warning("google-crc32c runs its pure-Python fallback: TFRecord CRCs will be slow "
                    "(install a google-crc32c wheel for this platform)")


def run_expand(job, beam_args=(), overwrite=False, show_progress=False):
    """Run `job`; return the manifest (also written to OUTPUT/manifest.json).
    `show_progress`: a live progress display on stderr while the pipeline runs."""
    started = time.time()
    check_crc()
    if job.copies == 0 and not job.keep_original:
        raise UserError("nothing to write: copies is 0 and keep_original is false")
    discovery = sources.discover(job)
    prepare_output(job.output, job.prefix, overwrite)
    num_shards = pick_num_shards(job, discovery)
    tmp_dir = FileSystems.join(job.output, sinks.TMP_DIR)
    FileSystems.mkdirs(tmp_dir)
    options = beam_options(beam_args)
    log.info("%d %s inputs -> %d shards in %s (runner %s)", len(discovery.refs),
             discovery.kind, num_shards, job.output, options.view_as(StandardOptions).runner)
    discovered_at = time.time()
    p = beam.Pipeline(options=options)
    build_pipeline(p, job, discovery, num_shards, tmp_dir, job.config_hash)
    total = len(discovery.refs) if discovery.kind == "folder" else None  # records: unknown
    with progress.Shown(total, enabled=show_progress):
        p.run().wait_until_finish()
    finished = time.time()

    with FileSystems.open(FileSystems.join(tmp_dir, "summary.json")) as f:
        summary = json.loads(f.read())
    manifest = _manifest(job, discovery, num_shards, summary, beam_args,
                         {"discover_s": discovered_at - started,
                          "pipeline_s": finished - discovered_at,
                          "total_s": time.time() - started})
    with FileSystems.create(FileSystems.join(job.output, "manifest.json")) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
    FileSystems.delete([tmp_dir])
    counts = manifest["counts"]
    if counts["discovered"] != counts["written"] + counts["errored"]:
        raise RuntimeError(f"accounting failed: {counts['discovered']} inputs discovered but "
                           f"{counts['written']} written + {counts['errored']} errored")
    return manifest


def _manifest(job, discovery, num_shards, summary, beam_args, timings):
    first_copy = "0" if job.keep_original else "1"
    labels, copies, per_shard = collections.Counter(), collections.Counter(), {}
    for shard in summary["shards"]:
        labels.update(shard["labels"])
        copies.update(shard["copies"])
        per_shard[shard["shard"]] = shard["records"]
    names = discovery.label_names

    def label_name(label):
        if label == "None":
            return "(none)"
        return names[int(label)] if names and int(label) < len(names) else label

    return {
        "augbatch_version": __version__,
        "config": job.to_dict(),
        "config_hash": job.config_hash,
        "seed": job.seed,
        "input": {"kind": discovery.kind, "paths": list(job.input), "label_names": names,
                  "skipped_non_images": discovery.skipped},
        "output": {"directory": job.output, "num_shards": num_shards,
                   "shards": sorted(per_shard), "compression": job.compression,
                   "format": job.format},
        "counts": {"discovered": summary["discovered"], "written": copies.get(first_copy, 0),
                   "errored": summary["errored"], "outputs": sum(per_shard.values()),
                   "per_label": {label_name(k): v for k, v in sorted(labels.items())},
                   "per_copy": dict(sorted(copies.items(), key=lambda kv: int(kv[0]))),
                   "per_shard": per_shard},
        "errors_by_stage": summary["errors_by_stage"],
        "features": {"image": "image/encoded", "label": "image/class/label",
                     "written": list(FEATURE_KEYS)},
        "beam_args": list(beam_args),
        "versions": versions(),
        "timings": timings,
    }

