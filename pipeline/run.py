"""Wires one `expand` job: discover -> read -> decode -> augment+encode -> shards + manifest.

`run_expand` is the one entry the CLI, the tests and the benchmark call.
"""
import collections
import json
import logging
import math
import os
import platform
import time
from importlib import metadata

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import __version__, progress, sinks, sources, targets
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


def _delete_tree(path):
    """Delete a folder and what is in it, on any filesystem (on an object store such as gs://
    there is no folder to delete, only the objects under its prefix)."""
    inside = [m.path for m in FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list]
    if inside:
        FileSystems.delete(inside)
    if FileSystems.exists(path):
        FileSystems.delete([path])


def prepare_output(output, prefix, overwrite):
    """Refuse a non-empty output dir unless `overwrite`; then delete only our own files."""
    present, ours = _own_files(output, prefix)
    if present and not overwrite:
        raise UserError(f"output directory {output} is not empty ({len(present)} files)",
                        hint="pass --overwrite to replace an earlier run's output, or choose "
                             "another --output")
    if ours:
        FileSystems.delete(ours)
    tmp_dir = FileSystems.join(output, sinks.TMP_DIR)
    if FileSystems.exists(tmp_dir):  # left (emptied above) by a run that was killed
        FileSystems.delete([tmp_dir])
    foreign = sorted(set(present) - set(ours))
    if foreign:
        log.warning("--overwrite keeps %d files augbatch did not write in %s, e.g. %s",
                    len(foreign), output, foreign[0])
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)


def pick_num_shards(job, discovery):
    if job.num_shards:
        return job.num_shards
    total = _total_bytes(ref.path for ref in discovery.refs)
    outputs_per_input = job.copies + (1 if job.keep_original else 0)
    return max(1, min(10_000, math.ceil(total * outputs_per_input / SHARD_TARGET_BYTES)))


def _total_bytes(paths):
    """Total size of the files (a missing one counts 0): local files with a stat each, which
    takes a twentieth of Beam's match per path; the others with one match call."""
    total, remote = 0, []
    for path in paths:
        if not sources.is_local(path):
            remote.append(path)
            continue
        try:
            total += os.stat(path).st_size
        except OSError:  # a broken link: reading it will say why
            pass
    matched = FileSystems.match(remote) if remote else []
    return total + sum(m.size_in_bytes for r in matched for m in r.metadata_list)


# --- the pipeline ------------------------------------------------------------------------------

def beam_options(beam_args):
    """Beam options from the pass-through args; the DirectRunner unless a runner is named
    (Beam's own default may be a runner that downloads a binary)."""
    options = PipelineOptions(list(beam_args))
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    return options


def build_pipeline(p, job, discovery, num_shards, tmp_dir, config_hash, accelerator=None):
    """Add the whole job to pipeline `p`. The summary lands in tmp_dir/summary.json.
    `accelerator`: a Beam resource hint for the augment step (GPU workers on Dataflow)."""
    refs = p | "Inputs" >> beam.Create(discovery.refs) | "Spread" >> beam.Reshuffle()
    if discovery.kind == "folder":
        read = refs | "Read" >> beam.ParDo(T.ReadImageFile(discovery.label_names)).with_outputs(
            T.ERRORS, main="inputs")
    else:
        read = refs | "Read" >> beam.ParDo(T.ReadTFRecordFile(
            job.image_feature, job.label_feature)).with_outputs(T.ERRORS, main="inputs")
    # What discovery found but cannot use (images beside the class folders, symlink loops).
    outside = p | "Rejected" >> beam.Create([T.ErrorRecord(
        ref.key, ref.path, None, "read", error_type, message, reason)
        for ref, error_type, reason, message in discovery.rejected])
    inputs = read.inputs
    if discovery.kind == "tfrecord":
        inputs = inputs | "SpreadRecords" >> beam.Reshuffle()
    decoded = inputs | "Decode" >> beam.ParDo(T.DecodeImage(
        job.channels, job.max_pixels)).with_outputs(T.ERRORS, main="images")
    augment = beam.ParDo(T.AugmentAndEncode(job, config_hash))
    if accelerator:
        augment = augment.with_resource_hints(accelerator=accelerator)
    # Full batches of one shape, capped in images and pixels (augment.inputs_per_batch):
    # few calls into TensorFlow, bounded memory.
    augmented = (decoded.images
                 | "Batch" >> beam.ParDo(T.BatchByShape(job))
                 | "AugmentEncode" >> augment.with_outputs(T.ERRORS, T.TARGET_COUNTS,
                                                            main="records"))
    target_counts = augmented[T.TARGET_COUNTS]
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
                             beam.pvalue.AsSingleton(count), beam.pvalue.AsList(target_counts)))


def _added(counts):
    """{name: sum} of a list of {name: count} (zeros kept, unlike Counter's +)."""
    total = collections.Counter()
    for one in counts:
        total.update(one)
    return dict(sorted(total.items()))


def _write_summary(_, output, tmp_dir, shard_stats, errors, discovered, target_counts=()):
    """Runs once, after every shard is written: errors.jsonl (sorted) and the counts.
    `discovered` counts what the read step saw: each input read, each input that failed to
    read (a damaged TFRecord's unreadable rest counts as one) and each rejected path."""
    errors = sorted(errors, key=lambda e: (e.key, e.stage))
    staging = FileSystems.join(tmp_dir, "errors.jsonl")
    with FileSystems.create(staging) as f:
        for e in errors:
            f.write((json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n").encode())
    final = FileSystems.join(output, "errors.jsonl")
    if FileSystems.exists(final):
        FileSystems.delete([final])
    FileSystems.rename([staging], [final])
    by_reason = collections.Counter((e.stage, e.reason) for e in errors)
    summary = {"discovered": discovered, "shards": sorted(shard_stats, key=lambda s: s["shard"]),
               "errors_by_stage": dict(sorted(collections.Counter(e.stage for e in errors)
                                              .items())),
               "errors_by_reason": [{"stage": stage, "reason": reason, "count": n}
                                    for (stage, reason), n in sorted(
                                        by_reason.items(), key=lambda kv: (-kv[1], kv[0]))],
               "errored": len({e.key for e in errors}),
               "targets": _added(target_counts)}
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
    from pipeline.ops import tfa_image  # which implementation ran the tfa.image ops
    out["tfa.image backend"] = tfa_image.BACKEND
    return out


def check_crc():
    import google_crc32c
    if google_crc32c.implementation != "c":
        log.warning("google-crc32c runs its pure-Python fallback: TFRecord CRCs will be slow "
                    "(install a google-crc32c wheel for this platform)")


def dry_run(job, beam_args=(), accelerator=None):
    """Build the whole pipeline for the runner `beam_args` name, without running it or writing
    anything (not even the output directory): the --dry-run report."""
    from pipeline import runners
    job = runners.on_any_worker(job)
    discovery = sources.discover(job)
    targets.check_chain(job.chain, targets.peek_kinds(discovery, job))
    num_shards = pick_num_shards(job, discovery)
    options = beam_options(beam_args)
    p = runners.new_pipeline(options)
    build_pipeline(p, job, discovery, num_shards, FileSystems.join(job.output, sinks.TMP_DIR),
                   job.config_hash, accelerator)
    return runners.render(p, options, {
        "inputs": f"{len(discovery.refs)} {discovery.kind} input(s) from {', '.join(job.input)}",
        "output": f"{num_shards} shard(s) in {job.output}"})


def run_expand(job, beam_args=(), overwrite=False, show_progress=False, accelerator=None):
    """Run `job`; return the manifest (also written to OUTPUT/manifest.json).
    `show_progress`: a live progress display on stderr while the pipeline runs.
    `accelerator`: a resource hint for the augment step (see build_pipeline)."""
    started = time.time()
    check_crc()
    if job.copies == 0 and not job.keep_original:
        raise UserError("nothing to write: copies is 0 and keep_original is false")
    from pipeline import augment, runners
    job = runners.on_any_worker(job)
    job = augment.for_workers(job, beam_options(beam_args))  # before the output is touched
    discovery = sources.discover(job)
    # Inputs with boxes, masks or keypoints need a chain that carries them: refused now.
    targets.check_chain(job.chain, targets.peek_kinds(discovery, job))
    prepare_output(job.output, job.prefix, overwrite)
    num_shards = pick_num_shards(job, discovery)
    tmp_dir = FileSystems.join(job.output, sinks.TMP_DIR)
    FileSystems.mkdirs(tmp_dir)
    options = beam_options(beam_args)
    log.info("%d %s inputs -> %d shards in %s (runner %s)", len(discovery.refs),
             discovery.kind, num_shards, job.output, options.view_as(StandardOptions).runner)
    discovered_at = time.time()
    p = runners.new_pipeline(options)
    build_pipeline(p, job, discovery, num_shards, tmp_dir, job.config_hash, accelerator)
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
    staging = FileSystems.join(tmp_dir, "manifest.json")
    with FileSystems.create(staging) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
    final = FileSystems.join(job.output, "manifest.json")
    if FileSystems.exists(final):
        FileSystems.delete([final])
    FileSystems.rename([staging], [final])
    _delete_tree(tmp_dir)
    check_accounting(manifest, discovery)
    if manifest["error_limit"]["exceeded"]:
        raise TooManyErrors(manifest)
    return manifest


# --- accounting --------------------------------------------------------------------------------

def check_accounting(manifest, discovery):
    """Every input found must be written or in errors.jsonl; anything else is a bug."""
    counts = manifest["counts"]
    problems = []
    dropped = manifest.get("targets", {}).get("inputs_all_dropped", 0)  # by the target rules
    if counts["discovered"] != counts["written"] + counts["errored"] + dropped:
        problems.append(f"{counts['discovered']} inputs discovered but {counts['written']} "
                        f"written + {counts['errored']} errored + {dropped} dropped by the "
                        "target rules")
    found = len(discovery.refs) + len(discovery.rejected)
    if discovery.kind == "folder" and counts["discovered"] != found:
        problems.append(f"{found} inputs listed but {counts['discovered']} read")
    if problems:
        raise RuntimeError("accounting failed: " + "; ".join(problems) + " (a bug in augbatch: "
                           f"see {manifest['output']['directory']}/manifest.json)")


def error_limit(job, counts):
    """Whether the errors pass the job's limits (--max-errors, --max-error-rate; None: none)."""
    errored, discovered = counts["errored"], counts["discovered"]
    rate = errored / discovered if discovered else 0.0
    exceeded = ((job.max_errors is not None and errored > job.max_errors)
                or (job.max_error_rate is not None and rate > job.max_error_rate))
    return {"max_errors": job.max_errors, "max_error_rate": job.max_error_rate,
            "error_rate": round(rate, 6), "exceeded": exceeded}


class TooManyErrors(UserError):
    """The run finished (shards, errors.jsonl and manifest.json are written) but more inputs
    failed than the job allows. Exit code 3: the data, not the command, is at fault."""

    exit_code = 3

    def __init__(self, manifest):
        counts, limit = manifest["counts"], manifest["error_limit"]
        over = [f"--max-errors {limit['max_errors']}" if limit["max_errors"] is not None
                and counts["errored"] > limit["max_errors"] else None,
                f"--max-error-rate {limit['max_error_rate']}"
                if limit["max_error_rate"] is not None
                and limit["error_rate"] > limit["max_error_rate"] else None]
        lines = [f"too many bad inputs: {counts['errored']} of {counts['discovered']} failed "
                 f"({100 * limit['error_rate']:.1f}%), over {' and '.join(o for o in over if o)}"]
        lines += progress.error_lines(manifest)
        lines.append(f"  {counts['written']} inputs were written; the output is complete for "
                     "them, but the job counts as failed")
        super().__init__("\n".join(lines), hint="fix or remove the bad inputs, or raise the "
                         "limit (--max-errors / --max-error-rate, or errors.max_errors / "
                         "errors.max_error_rate in the config)")
        self.manifest = manifest


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

    counts = {"discovered": summary["discovered"], "written": copies.get(first_copy, 0),
              "errored": summary["errored"], "outputs": sum(per_shard.values()),
              "per_label": {label_name(k): v for k, v in sorted(labels.items())},
              "per_copy": dict(sorted(copies.items(), key=lambda kv: int(kv[0]))),
              "per_shard": per_shard}
    return {
        "augbatch_version": __version__,
        "config": job.to_dict(),
        "config_hash": job.config_hash,
        "seed": job.seed,
        "input": {"kind": discovery.kind, "paths": list(job.input), "label_names": names,
                  "skipped_non_images": discovery.skipped,
                  "skipped_hidden": discovery.hidden},
        "output": {"directory": job.output, "num_shards": num_shards,
                   "shards": sorted(per_shard), "compression": job.compression,
                   "format": job.format},
        "counts": counts,
        "errors_by_stage": summary["errors_by_stage"],
        "errors_by_reason": summary["errors_by_reason"],
        "error_limit": error_limit(job, counts),
        "targets": summary.get("targets") or {},
        "features": {"image": "image/encoded", "label": "image/class/label",
                     "written": list(FEATURE_KEYS)},
        "beam_args": list(beam_args),
        "versions": versions(),
        "timings": timings,
    }

