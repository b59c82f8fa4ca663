"""Wires one `expand` job: discover -> read -> decode -> augment+encode -> shards + manifest.

`run_expand` is the one entry the CLI, the tests and the benchmark call.
"""
import collections
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import time
import uuid
from importlib import metadata

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TypeOptions

from pipeline import (__version__, balance, formats, progress, quiet, sinks, sources, targets,
                      tfds_output)
from pipeline import transforms as T
from pipeline import errors as stops
from pipeline.errors import UserError
from pipeline.example import FEATURE_KEYS, OPS_KEY

log = logging.getLogger("augbatch")
SHARD_TARGET_BYTES = 128 << 20


# --- the output directory ----------------------------------------------------------------------
# What --overwrite may delete is decided by what an earlier run recorded, never by names alone:
# the files its manifest.json lists; and for a run that died (its lock file is still there,
# naming its shard pattern) that run's exact shard names and our temporary files. Anything
# else in the folder is someone else's: --overwrite then refuses, naming it.

LOCK_FILE = ".augbatch.lock"
_TMP_NAMES = re.compile(r"(bucket-\d{5}-\d+-[0-9a-f]{32}|done-[0-9a-f]{32}\.json(\.part)?|run\.json"
                        r"|inputs\.jsonl|errors\.jsonl|summary\.json|manifest\.json"
                        r"|dataset_info\.json|features\.json|label\.labels\.txt"
                        r"|.+-\d{5}-of-\d{5}\.tfrecord(\.gz)?)")


class OutputLock:
    """One run at a time per (local) output folder: an flock on OUTPUT/.augbatch.lock, which
    names the run holding it. The kernel drops the lock when its process dies, so the lock
    file of a crashed run is stale: the next run takes it over and reads from it which files
    that run may have left. Object stores have no locks: there, runs are not locked."""

    def __init__(self, output):
        self.path = os.path.join(output, LOCK_FILE)
        self.fd = self.stale = None

    def acquire(self):
        """Take the lock. Returns the record of a run that held it and died without
        finishing (its files may still be here), or None."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): not locked
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = _read_record(fd)
                os.close(fd)
                raise UserError(f"another augbatch run is writing to {os.path.dirname(self.path)}"
                                f": {_describe_run(other)}", hint="wait for it to finish, or "
                                "choose another --output") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else its holder deleted it as we opened it: take the new one
                break
            os.close(fd)
        self.fd, self.stale = fd, _read_record(fd)
        return self.stale

    def write(self, record):
        """Name this run in the lock file (once the output folder is ours to write)."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(record, sort_keys=True).encode(), 0)
        self.stale = None

    def release(self):
        """Unlock; the file goes unless it still names a dead run whose files are here."""
        if self.fd is not None:
            if self.stale is None:
                os.unlink(self.path)  # while still held: no one locks a file being removed
            os.close(self.fd)
            self.fd = None


def _read_record(fd):
    try:
        data = os.pread(fd, 1 << 16, 0)
        return json.loads(data) if data else None
    except ValueError:
        return {}


def _describe_run(record):
    if not record:
        return "a run whose lock file says nothing more"
    return (f"run {record.get('run_id', '?')} (process {record.get('pid', '?')} on "
            f"{record.get('host', '?')}, started {record.get('started', '?')})")


def _run_record(job, num_shards):
    return {"run_id": uuid.uuid4().hex[:12], "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "prefix": job.prefix, "num_shards": num_shards, "compression": job.compression}


def _listing(output):
    """Every file under `output` (relative names), except our lock file."""
    listing = FileSystems.match([FileSystems.join(output, "**")])[0].metadata_list
    names = (m.path[len(output.rstrip("/")) + 1:] for m in listing)
    return sorted(n for n in names if n and n != LOCK_FILE)


def _earlier_manifest(output, names):
    """The manifest.json of an earlier augbatch run in `output`, or None."""
    if "manifest.json" not in names:
        return None
    try:
        with FileSystems.open(FileSystems.join(output, "manifest.json")) as f:
            manifest = json.loads(f.read(1 << 26))
        shards = manifest["output"]["shards"]
        if "augbatch_version" in manifest and all(isinstance(n, str) for n in shards):
            return manifest
    except Exception:  # noqa: BLE001 - not ours (not JSON, another shape): foreign
        pass
    return None


def _ours(output, names, stale):
    """The names in `output` an earlier augbatch run wrote."""
    ours = set()
    manifest = _earlier_manifest(output, names)
    if manifest:
        ours |= {"manifest.json", "errors.jsonl"}
        ours |= {n for n in manifest["output"]["shards"] if "/" not in n}
        ours |= {n for n in manifest["output"].get("tfds_files", ()) if "/" not in n}
    if stale:  # a run that died: its exact shard names, maybe committed before it died
        try:
            ours |= set(sinks.shard_names(stale["prefix"], stale["num_shards"],
                                          stale["compression"])) | {"errors.jsonl"}
        except (KeyError, TypeError, ValueError):
            pass
    tmp = sinks.TMP_DIR + "/"
    ours |= {n for n in names if n.startswith(tmp) and _TMP_NAMES.fullmatch(n[len(tmp):])}
    return ours & set(names)


def prepare_output(output, overwrite, stale=None):
    """Refuse a non-empty output dir unless `overwrite`; then delete only an earlier run's
    files, refusing (naming them) if anything else is there. `stale`: the lock record of a run
    that died in this folder."""
    present = _listing(output)
    if present and not overwrite:
        if f"{sinks.TMP_DIR}/{RUN_FILE}" in present:  # a stopped run's work, kept for --resume
            raise UserError(f"output directory {output} holds an interrupted run's files",
                            hint="pass --resume to go on with the work it kept, or --overwrite "
                                 "to start over")
        raise UserError(f"output directory {output} is not empty ({len(present)} files)",
                        hint="pass --overwrite to replace an earlier run's output, or choose "
                             "another --output")
    ours = _ours(output, present, stale)
    foreign = [n for n in present if n not in ours]
    if foreign:
        shown = ", ".join(sources.printable(n) for n in foreign[:5])
        raise UserError(f"--overwrite refused: {output} holds {len(foreign)} file"
                        f"{'s' if len(foreign) > 1 else ''} augbatch did not write: {shown}"
                        + (", ..." if len(foreign) > 5 else ""),
                        hint="--overwrite deletes only what an earlier augbatch run wrote (the "
                             "files its manifest.json lists); move the other files away or "
                             "choose another --output")
    if ours:
        FileSystems.delete([FileSystems.join(output, n) for n in sorted(ours)])
    tmp_dir = FileSystems.join(output, sinks.TMP_DIR)
    if FileSystems.exists(tmp_dir):  # left (emptied above) by a run that was killed
        _delete_tree(tmp_dir)


def _delete_tree(path):
    """Delete a folder and what is in it, on any filesystem (on an object store such as gs://
    there is no folder to delete, only the objects under its prefix)."""
    inside = [m.path for m in FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list]
    if inside:
        FileSystems.delete(inside)
    if is_local_dir(path):
        shutil.rmtree(path)  # and the empty folders below it
    elif FileSystems.exists(path):
        FileSystems.delete([path])


def is_local_dir(path):
    return sources.is_local(path) and os.path.isdir(path)


def pick_num_shards(job, discovery):
    """The number of shards, by the inputs' size; for a dataset with splits (train, val ...)
    ((split, shards), ...): each split its own, num_shards each if given."""
    splits = {getattr(ref, "split", None) for ref in discovery.refs}
    if splits == {None}:
        return job.num_shards or _shards_for(job, discovery.refs, True)
    return tuple((split, job.num_shards or _shards_for(job, [
        ref for ref in discovery.refs if ref.split == split], T.augments(job, split)))
        for split in sorted(splits, key=lambda s: s or ""))


def _shards_for(job, refs, augmented):
    total = _total_bytes(ref.path for ref in refs)
    outputs_per_input = job.copies + (1 if job.keep_original else 0) if augmented else 1
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
    (Beam's own default may be a runner that downloads a binary). Beam's type checks while
    the pipeline is built are off: they check type hints, and augbatch's steps declare none
    (with the single shuffle of the inputs in build_pipeline: a warm run of 21 inputs 0.73 ->
    0.61 CPU-s, measured)."""
    options = PipelineOptions(list(beam_args))
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    options.view_as(TypeOptions).pipeline_type_check = False
    return options


def build_pipeline(p, job, discovery, num_shards, tmp_dir, config_hash, accelerator=None,
                   done=frozenset(), resumed_buckets=(), listed=False):
    """Add the whole job to pipeline `p`. The summary lands in tmp_dir/summary.json.
    `accelerator`: a Beam resource hint for the augment step (GPU workers on Dataflow).
    `done`, `resumed_buckets`: the keys an interrupted run finished and the buckets holding
    their records (--resume): those inputs are not read again. `listed`: image files and
    TFRecord files, a labelled dataset's images and their annotations go to the workers in
    a file in tmp_dir (sources.write_input_list; a run), else inside the pipeline (a dry run,
    which writes nothing)."""
    refs = [ref for ref in discovery.refs if ref.key not in done]
    # (Creates here skip their own reshuffle: the refs get one below; the rest are small and
    # a few Beam steps fewer to build and run cut a run's fixed cost.)
    ranges = _input_list(tmp_dir, refs) if listed else None
    if ranges is not None:
        refs = (p | "Inputs" >> beam.Create(ranges, reshuffle=False)
                | "ListedInputs" >> beam.FlatMap(sources.read_input_list))
    else:
        refs = p | "Inputs" >> beam.Create(refs, reshuffle=False)
    # The inputs (and a TFRecord file's ranges) spread over the workers; on one worker in this
    # process that would only cost (~65 ms of a run's start: the first image read later).
    from pipeline import runners
    one_worker = runners.one_worker_here(p.options)

    def spread(pcoll, name):
        return pcoll if one_worker else pcoll | name >> beam.Reshuffle()
    refs = spread(refs, "Spread")
    if discovery.kind == "tfrecord":  # each file read in ranges of records, spread like files
        refs = spread(refs | "Ranges" >> beam.FlatMap(sources.record_ranges,
                                                      2 * sources.max_file_bytes(job.max_pixels)),
                      "SpreadRanges")
    read = refs | "Read" >> beam.ParDo(read_step(job, discovery, done)).with_outputs(
        T.ERRORS, main="inputs")
    # What discovery found but cannot use (images beside the class folders, symlink loops,
    # files of other formats).
    rejected = [T.ErrorRecord(ref.key, ref.path, None, "read", error_type, message, reason)
                for ref, error_type, reason, message in discovery.rejected]
    outside = p | "Rejected" >> beam.Create(rejected, reshuffle=False)
    # (plain RGB JPEGs and PNGs are decoded in the augment call, in TensorFlow's threads)
    decoded = read.inputs | "Decode" >> beam.ParDo(T.DecodeImage(
        job.channels, job.max_pixels, job.exif_orientation, in_graph=True)).with_outputs(
        T.ERRORS, T.ORIENTED, main="images")
    augment = beam.ParDo(T.AugmentAndEncode(job, config_hash))
    if accelerator:
        augment = augment.with_resource_hints(accelerator=accelerator)
    # Full batches of one shape, capped in images and pixels (augment.inputs_per_batch):
    # few calls into TensorFlow, bounded memory. (Planned for the most copies an input gets.)
    batching = dataclasses.replace(job, copies=balance.most_copies(job))
    augmented = (decoded.images
                 | "Batch" >> beam.ParDo(T.BatchByShape(batching))
                 | "AugmentEncode" >> augment.with_outputs(T.ERRORS, T.TARGET_COUNTS,
                                                            main="records"))
    target_counts = augmented[T.TARGET_COUNTS]
    shard_stats = augmented.records | "Write" >> sinks.WriteShards(
        job.output, tmp_dir, num_shards, job.prefix, job.compression, resumed_buckets)

    errors = ((read[T.ERRORS], outside, decoded[T.ERRORS], augmented[T.ERRORS])
              | "AllErrors" >> beam.Flatten())
    # What the read step saw (SEEN: each input read, each that failed to read, each rejected
    # path) and the photos' EXIF orientations, counted in one step (one shuffle, not three).
    seen = [pcoll | name >> beam.Map(lambda _: SEEN) for name, pcoll in (
        ("Seen", read.inputs), ("SeenBad", read[T.ERRORS]), ("SeenOutside", outside))]
    counts = ((*seen, decoded[T.ORIENTED]) | "AllCounted" >> beam.Flatten()
              | "Count" >> beam.combiners.Count.PerElement())
    (p | "Once" >> beam.Create([None])
     | "Summary" >> beam.Map(_write_summary, job.output, tmp_dir,
                             beam.pvalue.AsList(shard_stats), beam.pvalue.AsList(errors),
                             beam.pvalue.AsList(counts), beam.pvalue.AsList(target_counts)))


def _input_list(tmp_dir, refs):
    """The ranges of the inputs' list written in tmp_dir, or None for inputs whose fields
    are not plain data (then they go inside the pipeline, as Beam pickles them)."""
    try:
        return sources.write_input_list(tmp_dir, refs)
    except TypeError as e:
        log.debug("inputs inside the pipeline, not listed: %s", e)
        return None


def read_step(job, discovery, done=frozenset()):
    """The DoFn reading the inputs discovery found: InputRef -> Input(s) or error records."""
    if discovery.kind == "folder":
        names = {label: name for name, label in discovery.label_map.items()}
        return T.ReadImageFile(names, sources.max_file_bytes(job.max_pixels))
    if discovery.kind != "tfrecord":  # a labelled dataset: images and their annotations
        return formats.ReadAnnotated(discovery.kind, sources.max_file_bytes(job.max_pixels),
                                     job.exif_orientation)
    return T.ReadTFRecordFile(job.image_feature, job.label_feature,
                              2 * sources.max_file_bytes(job.max_pixels), frozenset(done))


def _added(counts):
    """{name: sum} of a list of {name: count} (zeros kept, unlike Counter's +)."""
    total = collections.Counter()
    for one in counts:
        total.update(one)
    return dict(sorted(total.items()))


SEEN = "seen"  # (counted with the EXIF orientations, which are numbers)


def _write_summary(_, output, tmp_dir, shard_stats, errors, counts, target_counts=()):
    """Runs once, after every shard is written: errors.jsonl (sorted) and the counts, in the
    temporary folder (run_expand commits them with the shards).
    `counts`: [(SEEN, what the read step saw: each input read, each input that failed to read
    (a damaged TFRecord's unreadable rest counts as one) and each rejected path)] and
    [(EXIF orientation, photos)]."""
    orientations = dict(counts)
    discovered = orientations.pop(SEEN, 0)
    errors = sorted(errors, key=lambda e: (e.key, e.stage))
    staging = FileSystems.join(tmp_dir, "errors.jsonl")
    with FileSystems.create(staging) as f:
        for e in errors:
            f.write((json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) + "\n").encode())
    by_reason = collections.Counter((e.stage, e.reason) for e in errors)
    summary = {"discovered": discovered, "shards": sorted(shard_stats, key=lambda s: s["shard"]),
               "errors_by_stage": dict(sorted(collections.Counter(e.stage for e in errors)
                                              .items())),
               "errors_by_reason": [{"stage": stage, "reason": reason, "count": n}
                                    for (stage, reason), n in sorted(
                                        by_reason.items(), key=lambda kv: (-kv[1], kv[0]))],
               "errored": len({e.key for e in errors}),
               "targets": _added(target_counts),
               "orientations": {str(o): n for o, n in sorted(orientations.items())}}
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


def dry_run(job, beam_args=(), accelerator=None, max_output_bytes=None):
    """Build the whole pipeline for the runner `beam_args` name, without running it or writing
    anything (not even the output directory): the --dry-run report, with the estimate of what
    the run writes (pipeline/estimate.py). Returns (report, the Estimate or None); the caller
    refuses the run with estimate.check_limit once the report is shown."""
    from pipeline import runners
    job = runners.on_any_worker(job)
    options = beam_options(beam_args)
    notes = runners.check_submission(job, options, dry_run=True)
    if all(sources.is_local(path) for path in job.input):
        discovery = sources.discover(job)
        targets.check_chain(job.chain, targets.peek_kinds(discovery, job))
        job = with_balance_plan(job, discovery)
        num_shards = pick_num_shards(job, discovery)
        inputs = f"{inputs_found(discovery)} from {', '.join(job.input)}"
        shards = progress.plural(sinks.total_shards(num_shards), "shard")
        found = _estimate(job, discovery, strict=max_output_bytes is not None)
    else:  # listing an object store needs the network (and credentials): a dry run stays off
        kind = "folder" if job.input_kind == "auto" else job.input_kind
        discovery = sources.Discovery(kind, [], {}, [], [])
        num_shards = job.num_shards or 1
        inputs = f"{', '.join(job.input)} (not listed: a dry run stays offline)"
        shards = (progress.plural(sinks.total_shards(num_shards), "shard") if job.num_shards else
                  "shards as the inputs' size asks (decided at run time)")
        found = None
    with runners.new_pipeline(options) as p:
        build_pipeline(p, job, discovery, num_shards, FileSystems.join(job.output, sinks.TMP_DIR),
                       job.config_hash, accelerator)
        report = runners.render(p, options, {"inputs": inputs,
                                             "output": f"{shards} in {job.output}"}, notes)
    if found is None:
        return report + "\nestimate: none (the inputs are not listed offline)", None
    if isinstance(found, str):
        return report + f"\nestimate: none ({found})", None
    return report + "\n" + "\n".join(found.lines()), found


def _estimate(job, discovery, strict=False):
    """The Estimate for a dry run; one that cannot be made is why, as text, unless `strict`
    (--max-output-bytes needs it: then it raises)."""
    from pipeline import estimate
    try:
        return estimate.estimate(job, discovery)
    except Exception as e:  # noqa: BLE001 - the dry run's other findings still count
        if strict:
            raise
        log.debug("no estimate", exc_info=True)
        return f"the sample failed: {T.message_of(e)}"


def with_balance_plan(job, discovery):
    """`job` with the copies per class of augment.balance planned from the inputs found."""
    if not job.balance:
        return job
    return dataclasses.replace(job, balance_plan=balance.make_plan(job, discovery))


def inputs_found(discovery):
    """'41 inputs' (the rejected ones included: each is an error record, counted as an input),
    or '3 TFRecord files' (their records are counted as they are read)."""
    if discovery.kind == "tfrecord":
        return progress.plural(len(discovery.refs), "TFRecord file")
    return progress.plural(len(discovery.refs) + len(discovery.rejected), "input")


def run_expand(job, beam_args=(), overwrite=False, show_progress=False, accelerator=None,
               resume=False, max_output_bytes=None):
    """Run `job`; return the manifest (also written to OUTPUT/manifest.json).
    `show_progress`: a live progress display on stderr while the pipeline runs.
    `accelerator`: a resource hint for the augment step (see build_pipeline).
    `resume`: reuse what an interrupted run of this very job committed in OUTPUT.
    `max_output_bytes`: refuse the run if its estimate (pipeline/estimate.py) is over it, before
    anything is written; and fail it, keeping nothing, if its shards come out over it.

    Everything is written in OUTPUT/.augbatch-tmp and moved to its final name only when the
    whole run is done (the manifest last). A run that fails deletes its temporary files; one
    stopped by Ctrl-C or SIGTERM keeps the work it committed, for --resume."""
    started = time.time()
    check_crc()
    if job.copies == 0 and not job.keep_original:
        raise UserError("nothing to write: copies is 0 and keep_original is false")
    from pipeline import augment, runners
    job = runners.on_any_worker(job)
    runners.check_submission(job, beam_options(beam_args))  # before the output is touched
    job = augment.for_workers(job, beam_options(beam_args))
    discovery = sources.discover(job)
    # Inputs with boxes, masks or keypoints need a chain that carries them: refused now.
    target_kinds = targets.peek_kinds(discovery, job)
    targets.check_chain(job.chain, target_kinds)
    job = targets.with_dataset_keypoint_flip(job, discovery)
    if resume and target_kinds:  # their counts come from the augment step, not the journals
        raise UserError("--resume works for inputs without boxes, masks or keypoints: the "
                        "manifest's target counts of the reused inputs would be missing",
                        hint="pass --overwrite to run again from the start")
    job = with_balance_plan(job, discovery)
    _warn_about(discovery)
    num_shards = pick_num_shards(job, discovery)
    limit = None
    if max_output_bytes is not None:
        from pipeline import estimate
        limit = (max_output_bytes, estimate.estimate(job, discovery))
        log.info("estimate: %s", "; ".join(limit[1].lines()))
        estimate.check_limit(limit[1], max_output_bytes)
    if sources.is_local(job.output) and os.path.isfile(job.output):
        raise UserError(f"--output {job.output} is a file, not a folder",
                        hint="choose another --output (a folder: new, empty or an earlier run's)")
    created = _missing_folders(job.output)  # (a stopped or failed run removes them again)
    if created:
        FileSystems.mkdirs(job.output)
    lock = OutputLock(job.output) if is_local_dir(job.output) else None
    tmp_dir, tmp_made = FileSystems.join(job.output, sinks.TMP_DIR), False
    fingerprint = _fingerprint(job, discovery, num_shards)
    sinks.stop_writing(tmp_dir, stopped=False)  # an earlier run in this process may have stopped
    resumed = (set(), [])
    try:
        stale = lock.acquire() if lock else None
        if resume and FileSystems.exists(FileSystems.join(tmp_dir, RUN_FILE)):
            resumed = _resume(job.output, tmp_dir, fingerprint)
        else:
            if stale is not None:
                log.warning("%s did not finish in %s (its process is gone); its lock is taken "
                            "over", _describe_run(stale), job.output)
            prepare_output(job.output, overwrite, stale)
            FileSystems.mkdirs(tmp_dir)
            with FileSystems.create(FileSystems.join(tmp_dir, RUN_FILE)) as f:
                f.write(json.dumps(fingerprint, sort_keys=True).encode())
        tmp_made = True
        if lock:
            lock.write(_run_record(job, num_shards))
        with quiet.own_tempdir():
            manifest = _run(job, discovery, num_shards, tmp_dir, beam_args, show_progress,
                            accelerator, started, resumed, limit)
    except BaseException as e:
        stopped = isinstance(e, KeyboardInterrupt) or stops.stopped_by
        kept = 0
        with contextlib.suppress(Exception):  # the run's own error is the one to tell
            sinks.stop_writing(tmp_dir)  # worker threads may still be running
            if tmp_made and stopped:
                kept = len(sinks.read_journals(tmp_dir)[0])
            if tmp_made and not kept:
                _delete_tree(tmp_dir)
            if lock:
                lock.release()
            for folder in created:  # (deepest first; one holding anything stays)
                if is_local_dir(folder) and not os.listdir(folder):
                    os.rmdir(folder)
        if stopped:
            stop = stops.Terminated if stops.stopped_by == signal.SIGTERM else KeyboardInterrupt
            raise stop(f"the work of {kept} inputs is kept in {tmp_dir}: run the same command "
                       "with --resume to go on from it (--overwrite starts over)" if kept else
                       f"nothing of this run was kept in {job.output} (its temporary files "
                       "were deleted); run the same command again to start over") from None
        full = _no_space(e)
        if full is not None:
            raise UserError(f"no space left on the device while writing {job.output}"
                            f"{f' ({full})' if full and full != job.output else ''}; the run's "
                            "temporary files were deleted and nothing of it was kept",
                            hint="free some space or choose another --output") from e
        raise
    if lock:
        lock.release()
    in_place = manifest.get("targets", {}).get(targets.MIRRORED_IN_PLACE)
    if in_place:
        log.warning("%s kept each keypoint in its slot (no targets.keypoint_flip): if the "
                    "keypoints have a left and a right side (eyes, hands), set "
                    "targets.keypoint_flip so that a mirrored copy swaps them",
                    f"{in_place} mirrored cop{'y' if in_place == 1 else 'ies'}")
    if manifest["error_limit"]["exceeded"]:
        raise TooManyErrors(manifest)
    if manifest["counts"]["written"] == 0:
        raise NothingWritten(manifest)
    return manifest


RUN_FILE = "run.json"  # in the temporary folder: what the run is, for --resume


def _missing_folders(path):
    """The folders that must be made for `path`, deepest first: `path` and its missing parents
    (on an object store, where folders are not made, `path` alone)."""
    if not sources.is_local(path):
        return [] if FileSystems.exists(path) else [path]
    missing, path = [], os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _fingerprint(job, discovery, num_shards):
    """What a resumed run must share with the interrupted one: config, inputs, sharding."""
    inputs = hashlib.sha256(json.dumps(
        [[ref.key, ref.path, ref.label] for ref in discovery.refs]
        + [[ref.key, ref.path] for ref, *_ in discovery.rejected]).encode("utf-8", "replace"))
    return {"config_hash": job.config_hash, "inputs": inputs.hexdigest()[:16],
            "num_shards": json.loads(json.dumps(num_shards)), "prefix": job.prefix,
            "compression": job.compression,  # (as JSON: split shards as lists)
            "buckets": sinks.BUCKET_FORMAT,  # (earlier runs' buckets held the records unframed)
            # records with and without augment/ops do not mix (not hashed: said when off)
            **({"record_ops": False} if not job.record_ops else {})}


def _resume(output, tmp_dir, fingerprint):
    """(keys done, committed buckets) of the interrupted run in `output`, once it is known to
    have run this very job; its uncommitted files are deleted."""
    with FileSystems.open(FileSystems.join(tmp_dir, RUN_FILE)) as f:
        earlier = json.loads(f.read())
    if earlier != fingerprint:
        changed = sorted(k for k in fingerprint if earlier.get(k) != fingerprint[k])
        raise UserError(f"--resume: the interrupted run in {output} differs from this one in "
                        f"{', '.join(changed) or 'what it recorded'}",
                        hint="resume with the same config and inputs, or pass --overwrite "
                             "to start over")
    tmp = sinks.TMP_DIR + "/"
    present = _listing(output)
    foreign = [n for n in present if not (n.startswith(tmp) and _TMP_NAMES.fullmatch(
        n[len(tmp):]))]
    if foreign:
        raise UserError(f"--resume refused: {output} holds files of no interrupted run: "
                        f"{', '.join(sources.printable(n) for n in foreign[:5])}",
                        hint="move them away, or pass --overwrite to start over")
    done, buckets, keep = sinks.read_journals(tmp_dir)
    uncommitted = [FileSystems.join(output, n) for n in present
                   if n[len(tmp):] not in keep | {RUN_FILE}]
    if uncommitted:
        FileSystems.delete(uncommitted)
    log.info("resuming: the %d inputs the interrupted run finished are reused", len(done))
    return done, buckets


def _run(job, discovery, num_shards, tmp_dir, beam_args, show_progress, accelerator, started,
         resumed, limit=None):
    """The pipeline, then the commit: the manifest of the finished run. `limit`: (the
    --max-output-bytes, the Estimate) the shards must stay under, else nothing is committed."""
    done, resumed_buckets = resumed
    options = beam_options(beam_args)
    log.info("%s -> %s in %s (runner %s)", inputs_found(discovery),
             progress.plural(sinks.total_shards(num_shards), "shard"), job.output,
             options.view_as(StandardOptions).runner)
    discovered_at = time.time()
    from pipeline import runners
    # Records in TFRecord files: unknown until read. Rejected inputs (and those a resumed run
    # reuses) count as done from the start.
    finished_before = len(discovery.rejected) + (len(done) if discovery.kind != "tfrecord" else 0)
    total = len(discovery.refs) + len(discovery.rejected) if discovery.kind != "tfrecord" else None
    with runners.new_pipeline(options) as p:
        build_pipeline(p, job, discovery, num_shards, tmp_dir, job.config_hash, accelerator,
                       done, resumed_buckets, listed=True)
        with progress.Shown(total, enabled=show_progress, done=finished_before):
            p.run().wait_until_finish()  # a failed run's temp folder goes in run_expand
    finished = time.time()

    with FileSystems.open(FileSystems.join(tmp_dir, "summary.json")) as f:
        summary = json.loads(f.read())
    summary["discovered"] += len(done)  # not read again: the interrupted run wrote them
    extra = _write_tfds_files(job, discovery, summary, tmp_dir) if job.tfds else []
    manifest = _manifest(job, discovery, num_shards, summary, beam_args,
                         {"discover_s": discovered_at - started,
                          "pipeline_s": finished - discovered_at,
                          "total_s": time.time() - started}, extra)
    if limit:  # what the run was allowed and what it expected to write
        manifest["estimate"] = dict(limit[1].to_dict(), max_output_bytes=limit[0])
    with FileSystems.create(FileSystems.join(tmp_dir, "manifest.json")) as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
    check_accounting(manifest, discovery)
    names = ([shard["shard"] for shard in summary["shards"]] + extra
             + ["errors.jsonl", "manifest.json"])
    if limit:  # (the run's failure path deletes the temporary folder: nothing is kept)
        _check_written(tmp_dir, names, *limit)
    FileSystems.rename([FileSystems.join(tmp_dir, n) for n in names],
                       [FileSystems.join(job.output, n) for n in names])  # the manifest last
    _delete_tree(tmp_dir)
    return manifest


def _check_written(tmp_dir, names, max_output_bytes, found):
    """Fail a run whose files came out over --max-output-bytes (its estimate was under)."""
    written = sum(m.size_in_bytes for r in FileSystems.match(
        [FileSystems.join(tmp_dir, n) for n in names]) for m in r.metadata_list)
    if written > max_output_bytes:
        from pipeline import estimate
        raise UserError(f"--max-output-bytes {estimate.size_text(max_output_bytes)}: the run "
                        f"wrote {estimate.size_text(written)} ({written} bytes), over the limit "
                        f"(its estimate was {estimate.size_text(found.bytes or 0)}); its files "
                        "were deleted and nothing of it was kept",
                        hint="raise --max-output-bytes, or write fewer copies or smaller images")


def _write_tfds_files(job, discovery, summary, tmp_dir):
    """dataset_info.json, features.json (and label.labels.txt) beside the shards in tmp_dir,
    for tfds.builder_from_directory (output.tfds); returns their names."""
    shards = summary["shards"]
    sizes = FileSystems.match([FileSystems.join(tmp_dir, s["shard"]) for s in shards])
    shards = [dict(s, bytes=sum(m.size_in_bytes for m in found.metadata_list))
              for s, found in zip(shards, sizes)]
    labels = {None if label == "None" else int(label)
              for shard in shards for label in shard["labels"]}
    kinds = targets.peek_kinds(discovery, job)
    if summary.get("targets") and not kinds:  # inputs with targets: at least boxes
        kinds = {targets.BOXES}
    texts = tfds_output.files(
        shards, labels, {label: name for name, label in discovery.label_map.items()},
        job.channels, kinds, f"augbatch {__version__} output (config hash {job.config_hash}, "
        f"seed {job.seed}): {job.copies} augmented copies of each input"
        + (" and the input itself (copy 0)" if job.keep_original else ""))
    for name, text in texts.items():
        with FileSystems.create(FileSystems.join(tmp_dir, name)) as f:
            f.write(text.encode())
    return sorted(texts)


def _no_space(exc):
    """The path (or '') of a full disk somewhere in `exc`'s chain (Beam wraps a worker's
    OSError in its own exceptions), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return exc.filename or ""
        if "No space left on device" in str(exc):
            return ""
        exc = exc.__cause__ or exc.__context__
    return None


def _warn_about(discovery):
    """What a user should hear of before a long run."""
    if discovery.duplicates:
        extra = sum(len(keys) - 1 for keys in discovery.duplicates)
        log.warning("%s the same file as another input (reached through links or overlapping "
                    "inputs), e.g. %s; each is written under each key (manifest: "
                    "input.same_file_under_several_keys)",
                    progress.plural(extra, "input") + (" is" if extra == 1 else " are"),
                    " and ".join(discovery.duplicates[0]))
    if discovery.skipped:
        count = len(discovery.skipped)
        log.warning("%s of a supported format, e.g. %s: each is an error record",
                    progress.plural(count, "file") + (" is not an image" if count == 1
                                                      else " are not images"),
                    discovery.skipped[0].key)


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
    if discovery.kind != "tfrecord" and counts["discovered"] != found:
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
        written = counts["written"]
        lines.append(f"  {progress.plural(written, 'input')} {'was' if written == 1 else 'were'} "
                     "written; the output is complete for them, but the job counts as failed")
        super().__init__("\n".join(lines), hint="fix or remove the bad inputs, or raise the "
                         "limit (--max-errors / --max-error-rate, or errors.max_errors / "
                         "errors.max_error_rate in the config)")
        self.manifest = manifest


class NothingWritten(UserError):
    """The run finished but wrote no input: every one failed. Exit code 3, as for too many
    errors: an empty result is never a quiet success."""

    exit_code = 3

    def __init__(self, manifest):
        counts = manifest["counts"]
        failed = counts["discovered"]
        lines = ["nothing was written: " + (f"all {failed} inputs failed" if failed != 1
                                            else "the one input failed")]
        lines += progress.error_lines(manifest)
        super().__init__("\n".join(lines), hint=f"see {manifest['output']['directory']}/"
                         "errors.jsonl for each input's error")
        self.manifest = manifest


def _orientation_counts(job, summary):
    """How many inputs had an EXIF orientation other than 1 (per orientation), and how many
    were turned upright at decode (input.exif_orientation)."""
    found = summary.get("orientations") or {}
    return {"applied": job.exif_orientation, "per_orientation": found,
            "turned_upright": sum(found.values()) if job.exif_orientation else 0}


def _manifest(job, discovery, num_shards, summary, beam_args, timings, tfds_files=()):
    first_copy = "0" if job.keep_original else "1"
    labels, copies, per_shard = collections.Counter(), collections.Counter(), {}
    for shard in summary["shards"]:
        labels.update(shard["labels"])
        copies.update(shard["copies"])
        per_shard[shard["shard"]] = shard["records"]
    names = {str(label): name for name, label in discovery.label_map.items()}

    def label_name(label):  # a label without a class folder (TFRecord inputs) as itself
        return "(none)" if label == "None" else names.get(label, label)

    written = copies.get(first_copy, 0)
    per_split = {}
    if not isinstance(num_shards, int):  # each split counted apart; val and test: copy 0 only
        for shard in summary["shards"]:
            split = per_split.setdefault(shard["split"] or "(none)", {
                "augmented": T.augments(job, shard["split"]), "written": 0, "outputs": 0})
            split["written"] += shard["copies"].get(first_copy if split["augmented"] else "0",
                                                    0)
            split["outputs"] += shard["records"]
        written = sum(split["written"] for split in per_split.values())
    counts = {"discovered": summary["discovered"], "written": written,
              "errored": summary["errored"], "outputs": sum(per_shard.values()),
              "per_label": {label_name(k): v for k, v in sorted(labels.items())},
              "per_copy": dict(sorted(copies.items(), key=lambda kv: int(kv[0]))),
              "per_shard": per_shard}
    if per_split:
        counts["per_split"] = dict(sorted(per_split.items()))
    return {
        "augbatch_version": __version__,
        "config": job.to_dict(),
        "config_hash": job.config_hash,
        "seed": job.seed,
        "input": {"kind": discovery.kind, "paths": list(job.input),
                  "label_names": discovery.label_names, "label_map": discovery.label_map,
                  "skipped_non_images": [ref.key for ref in discovery.skipped],
                  "skipped_hidden": discovery.hidden,
                  "same_file_under_several_keys": discovery.duplicates,
                  "exif_orientation": _orientation_counts(job, summary)},
        "output": {"directory": job.output, "num_shards": sinks.total_shards(num_shards),
                   "shards": sorted(per_shard), "compression": job.compression,
                   "format": job.format,
                   **({"tfds_files": list(tfds_files)} if job.tfds else {})},
        "counts": counts,
        "errors_by_stage": summary["errors_by_stage"],
        "errors_by_reason": summary["errors_by_reason"],
        "error_limit": error_limit(job, counts),
        "targets": summary.get("targets") or {},
        **({"balance": balance.before_and_after(job, discovery, labels)}
           if job.balance_plan else {}),
        "features": ({"image": tfds_output.IMAGE, "label": tfds_output.LABEL, "layout": "tfds"}
                     if job.tfds else {"image": "image/encoded", "label": "image/class/label",
                                       "written": list(FEATURE_KEYS)
                                       + ([OPS_KEY] if job.record_ops else [])}),
        "beam_args": list(beam_args),
        "versions": versions(),
        "timings": timings,
    }

