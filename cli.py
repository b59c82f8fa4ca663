"""The `augbatch` command line."""
import contextlib
import errno
import gc
import logging
import os
import signal
import sys
import traceback
import warnings

import click

from pipeline import __version__
from pipeline import errors
from pipeline.errors import Terminated, UserError
from pipeline.ops import registry

log = logging.getLogger("augbatch")


def path_error(exc):
    """An OSError about a path (missing, not writable, disk full...) -> a UserError, else None."""
    from apache_beam.io.filesystem import BeamIOError
    if isinstance(exc, BeamIOError) and exc.exception_details:
        # Beam's file systems wrap the first real failure: {path: exception}.
        path, inner = next(iter(exc.exception_details.items()))
        if isinstance(inner, OSError):
            return path_error(inner) or UserError(f"{path}: {inner}")
        return UserError(f"{path}: {inner}" if inner else str(exc))
    if getattr(exc, "_tagged_with_step", False) and isinstance(exc.__context__, OSError):
        return path_error(exc.__context__)  # Beam re-raised a DoFn's OSError as another type
    if not isinstance(exc, OSError):
        return None
    if not exc.filename:  # Beam's local file system re-raises OSError(original)
        inner = exc.args[0] if exc.args else None
        inner = inner if isinstance(inner, OSError) else exc.__cause__ or exc.__context__
        return path_error(inner) if isinstance(inner, OSError) else None
    path, code = exc.filename, exc.errno
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"permission denied: {path}", hint="check that you may read (inputs, "
                         "config) or write (--output) there, or choose another path")
    if code == errno.ENOENT:
        return UserError(f"no such file or directory: {path}",
                         hint=f"check the path (relative paths start at {os.getcwd()})")
    if code == errno.ENOSPC:
        return UserError(f"no space left on the device while writing {path}",
                         hint="free some space or choose another --output")
    if code in (errno.ENOTDIR, errno.EEXIST):
        return UserError(f"{path}: a file is in the way where a folder is needed",
                         hint="choose another --output, or move that file")
    return UserError(f"{path}: {exc.strerror or exc}")


class Size(click.ParamType):
    """A number of bytes: 1000000, 500MB, 1.5G, 2GiB (pipeline/estimate.py reads it)."""
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from pipeline import estimate
        try:
            return estimate.parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def first_line(exc, limit=300):
    text = str(exc).strip().splitlines()
    return (text[0][:limit] if text else "") or type(exc).__name__


class AugbatchGroup(click.Group):
    """One clear message when something goes wrong, no traceback unless --debug.

    A user error (config, paths, permissions, a full disk) prints the message and a hint and
    exits 2 (3: the data is at fault); Ctrl-C exits 130 and SIGTERM 143 (128 + the signal),
    saying what was kept; anything unexpected prints a one-line summary and exits 1.
    """

    def parse_args(self, ctx, args):
        # `augbatch expand ... --debug` as `augbatch --debug expand ...` (not after `--`, where
        # Beam's options go)
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[1:end]:
            args = ["--debug", *(a for i, a in enumerate(args) if i >= end or a != "--debug")]
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click prints these itself (usage errors exit 2)
        except KeyboardInterrupt as e:
            if ctx.meta.get("augbatch.debug"):
                traceback.print_exc()
            terminated = isinstance(e, Terminated)
            click.echo(f"error: stopped by {'SIGTERM' if terminated else 'Ctrl-C'}"
                       + (f": {first_line(e)}" if str(e) else ""), err=True)
            ctx.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
        except BrokenPipeError:  # (`augbatch list-ops | head`): the reader has all it wants
            with contextlib.suppress(OSError, ValueError):  # (no error at the last flush)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)  # as a command the signal ended
        except Exception as e:  # noqa: BLE001 - the one place every failure is reported
            debug = ctx.meta.get("augbatch.debug")
            if debug:
                traceback.print_exc()
            user_error = e if isinstance(e, UserError) else path_error(e)
            if user_error is not None:
                click.echo(f"error: {user_error}", err=True)
                if user_error.hint:
                    click.echo(f"hint: {user_error.hint}", err=True)
                ctx.exit(user_error.exit_code)
            click.echo(f"error: unexpected {type(e).__name__}: {first_line(e)}", err=True)
            if not debug:
                click.echo("run with --debug for the traceback", err=True)
            ctx.exit(1)


@contextlib.contextmanager
def imports_outside_gc():
    """Importing TensorFlow and Beam makes next to no garbage, but each full pass of Python's
    garbage collector walks everything imported so far (a few passes while importing, then one
    in a run: ~0.35 CPU-s each). None while importing; then what was imported, which lives as
    long as the command, stays out of later passes (gc.freeze; main unfreezes it at the end,
    for callers that run several commands in one process)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def quiet_startup():
    """Hide TensorFlow / absl / Beam start-up chatter (--debug keeps all of it). TensorFlow reads
    TF_CPP_MIN_LOG_LEVEL when it is first imported, which the commands do later."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", module="tensorflow_addons")
    # BatchElements' batch-size estimator fits timings with numpy, which warns on few points.
    warnings.filterwarnings("ignore", module="apache_beam.transforms.util")
    logging.getLogger("absl").setLevel(logging.ERROR)
    # Beam logs a failing DoFn's traceback, then re-raises: the error is reported once, below.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    from pipeline import quiet
    quiet.python_noise_off()
    quiet.import_tensorflow()  # now, to filter what newer TensorFlows print while imported


@click.group(cls=AugbatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="augbatch")
@click.option("--debug", is_flag=True, help="Show tracebacks, debug logs and the "
              "TensorFlow/Beam start-up messages.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def main(ctx, debug, quiet):
    """augbatch: N augmented copies of every image, as deterministic sharded TFRecords.

    Look first with `preview`, write with `expand`, check the result with `inspect`, make
    one copy again from its record with `replay`.
    Each command has its own --help with examples.

    \b
    Examples:
      augbatch preview -c sample_configs/light_classification.yaml -o preview.png
      augbatch expand --config sample_configs/light_classification.yaml --output out/
      augbatch inspect out/ --verify
      augbatch replay out/ objects/coffee_01.jpg:2
      augbatch list-ops --family tf.image
      augbatch validate sample_configs/mixed_chain.yaml
    """
    ctx.meta["augbatch.debug"] = debug
    ctx.meta["augbatch.quiet"] = quiet
    # SIGTERM (a scheduler stopping the job) ends a run as Ctrl-C does: cleaned up, said so.
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(signum, errors.stop)
        ctx.call_on_close(lambda signum=signum, previous=previous: signal.signal(signum, previous))
    ctx.call_on_close(gc.unfreeze)
    if not debug:
        with imports_outside_gc():
            quiet_startup()
    from pipeline.quiet import own_tempdir  # (once TensorFlow is imported: what it keeps
    ctx.with_resource(own_tempdir())         # at import lives on)
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(level)


class BeamOptionsAfterDashes(click.Command):
    """expand's own options, then Beam's pipeline options after `--`: a mistyped option before
    `--` is a usage error (exit 2), not an option handed to Beam (which warns and drops it)."""

    def parse_args(self, ctx, args):
        if "--" in args:
            cut = args.index("--")
            args, ctx.meta["augbatch.beam_args"] = args[:cut], args[cut + 1:]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx):
        return super().collect_usage_pieces(ctx) + ["[-- BEAM_PIPELINE_OPTIONS...]"]


@main.command(cls=BeamOptionsAfterDashes)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML or JSON config (input, output, augment chain).")
@click.option("-i", "--input", "inputs", multiple=True, help="Input folder, file or glob "
              "(repeatable). Overrides the config's input.")
@click.option("-o", "--output", help="Output directory for the shards and manifest.json.")
@click.option("--input-kind", type=click.Choice(["auto", "folder", "tfrecord", "coco", "yolo",
                                                 "voc", "masks", "manifest"]),
              help="What the input is (default auto: told from the files).")
@click.option("--copies", type=click.IntRange(0), help="Augmented copies per input.")
@click.option("--keep-original/--no-keep-original", default=None,
              help="Also write the untouched input as copy 0.")
@click.option("--plain-copies", is_flag=True, help="Accept copies without a chain (each "
              "copy the input again); otherwise an empty chain with copies > 0 is refused.")
@click.option("--seed", type=int, help="Global seed; every random draw derives from it.")
@click.option("--num-shards", type=click.IntRange(0), help="Output shards (0: by size).")
@click.option("--compression", type=click.Choice(["none", "gzip"]))
@click.option("--format", "format_", type=click.Choice(["jpeg", "png", "same"]),
              help="Output image format ('same': as the input, PNG for GIF/BMP).")
@click.option("--quality", type=click.IntRange(1, 100), help="JPEG quality.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Decode to 1 or 3 channels.")
@click.option("--batch-size", type=click.IntRange(1), help="Images per augmentation batch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]),
              help="Where the chain runs: auto (the first GPU if TensorFlow sees one), cpu, "
                   "or gpu (fail if there is none).")
@click.option("--tf-threads", type=click.IntRange(0),
              help="TensorFlow ops a worker runs at once, each on one thread (0: one per "
                   "core).")
@click.option("--xla/--no-xla", default=None,
              help="Compile the chain's colour and geometric steps with XLA: other random "
                   "draws, one compilation per image size; on a CPU slower than without.")
@click.option("--kernel", type=click.Choice(["opencv-uint8", "opencv", "tensorflow"]),
              help="How geometric ops resample on the CPU without XLA: opencv-uint8 (the "
                   "default: OpenCV's warp, on uint8 pixels where geometric ops start or end "
                   "the chain), opencv (always on float32 pixels) or tensorflow (TensorFlow's "
                   "kernel, as on a GPU).")
@click.option("--allow-python-ops", is_flag=True,
              help="Allow `python` ops, which import and run code named in the config.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier run's output in a non-empty output directory.")
@click.option("--resume", is_flag=True, help="Go on from where an interrupted run of the same "
              "config and inputs stopped, reusing the work it kept.")
@click.option("--max-pixels", type=click.IntRange(1), help="Reject images whose header "
              "declares more pixels (default 50000000), before decoding them.")
@click.option("--max-errors", type=click.IntRange(0), help="Fail the run (exit code 3, after "
              "writing everything) when more inputs than this fail. Default: never fail for "
              "bad inputs; they are always listed in errors.jsonl.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), help="Fail the run (exit code "
              "3) when more than this fraction of the inputs fail, e.g. 0.01.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display and no summary.")
@click.option("--runner", type=click.Choice(["direct", "dask", "dataflow", "flink", "spark",
                                             "portable"]),
              help="Where the pipeline runs (default: direct, this machine).")
@click.option("--dask-address", metavar="tcp://HOST:PORT",
              help="Run on this existing dask.distributed cluster (implies --runner dask).")
@click.option("--dask-workers", type=click.IntRange(1), metavar="N", help="Run on a local Dask "
              "cluster of N worker processes, started for this run (implies --runner dask).")
@click.option("--accelerator", metavar="HINT", help="Resource hint for the augment step, e.g. "
              "'type:nvidia-tesla-t4;count:1;install-nvidia-driver' (GPUs on Dataflow).")
@click.option("--dry-run", is_flag=True, help="Build the pipeline for the chosen runner and "
              "print its steps and options, and estimate the records, bytes and time of the "
              "run from a few sampled inputs; run nothing, write nothing.")
@click.option("--max-output-bytes", type=Size(), metavar="SIZE", help="Refuse the run (exit "
              "2, nothing written) if its estimate is over SIZE (e.g. 500MB, 2GiB); a run whose "
              "files still come out over it fails and keeps nothing.")
@click.pass_context
def expand(ctx, config_path, inputs, output, input_kind, copies, keep_original, plain_copies, seed,
           num_shards,
           compression, format_, quality, channels, batch_size, device, tf_threads, xla,
           kernel, allow_python_ops, overwrite, resume,
           max_pixels, max_errors, max_error_rate, quiet, runner, dask_address, dask_workers,
           accelerator, dry_run, max_output_bytes):
    """Write N augmented copies of every input image as sharded TFRecords.

    Flags override the config. Anything after `--` goes to Apache Beam as pipeline options
    (the DirectRunner runs unless you name another).

    Progress goes to stderr: a live bar on a terminal, otherwise a line every 10 seconds
    (AUGBATCH_PROGRESS_INTERVAL=SECONDS to change). It is live on the DirectRunner's in-memory
    and multi-threading modes; other runners show their own (Beam counters "augbatch").

    \b
    Examples:
      augbatch expand -c sample_configs/light_classification.yaml -o out/
      augbatch expand -c cfg.yaml -i 'data/train-*.tfrecord' -o out/ --copies 8 --seed 7
      augbatch expand -c cfg.yaml -o out/ -- --direct_num_workers=2 \\
          --direct_running_mode=multi_processing
      augbatch expand -c cfg.yaml -o out/ --runner dask --dask-workers 2
      augbatch expand -c cfg.yaml -o gs://bucket/out --runner dataflow --dry-run -- \\
          --project=my-project --region=us-central1 --temp_location=gs://bucket/tmp \\
          --setup_file=./setup.py
    """
    with imports_outside_gc():
        from pipeline import config, run, runners
    job = config.load(config_path, overrides={
        "input": inputs or None, "output": output, "input_kind": input_kind, "copies": copies,
        "keep_original": keep_original, "plain_copies": plain_copies or None, "seed": seed,
        "num_shards": num_shards,
        "compression": compression, "format": format_, "quality": quality,
        "channels": int(channels) if channels else None, "batch_size": batch_size,
        "device": device, "tf_threads": tf_threads, "xla": xla,
        "kernel": kernel, "max_pixels": max_pixels, "max_errors": max_errors,
        "max_error_rate": max_error_rate,
    }, allow_python_ops=allow_python_ops)
    quiet = quiet or ctx.meta.get("augbatch.quiet")
    if quiet:
        log.setLevel(logging.WARNING)
    beam_args, local_workers = runners.assemble(runner, ctx.meta.get("augbatch.beam_args", ()),
                                                dask_address, dask_workers)
    if dry_run:
        if local_workers:
            beam_args.append("--dask_client_address=<a local cluster of "
                             f"{local_workers} workers, started at run time>")
        report, found = run.dry_run(job, beam_args, accelerator=accelerator,
                                    max_output_bytes=max_output_bytes)
        click.echo(report)
        if found is not None and max_output_bytes is not None:
            from pipeline import estimate
            estimate.check_limit(found, max_output_bytes)  # the run would be refused: exit 2
        return
    manifest = None
    try:
        with runners.started(beam_args, local_workers) as beam_args:
            manifest = run.run_expand(job, beam_args, overwrite=overwrite,
                                      show_progress=not quiet, accelerator=accelerator,
                                      resume=resume, max_output_bytes=max_output_bytes)
    except KeyboardInterrupt:
        if manifest is None:
            raise
        log.warning("stopped while the local Dask cluster was closing; the run had finished "
                    "and its output is complete")
    if not quiet:
        from pipeline import progress
        for line in progress.summary(manifest):
            click.echo(line)


@main.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML or JSON config, as for expand.")
@click.option("-i", "--input", "inputs", multiple=True, help="Input folder, file or glob "
              "(repeatable). Overrides the config's input.")
@click.option("-n", "--num-inputs", default=6, show_default=True, type=click.IntRange(1, 200),
              help="Inputs to sample: one row each.")
@click.option("--copies", type=click.IntRange(0, 64),
              help="Copies per input  [default: the config's, at most 8]")
@click.option("--seed", type=int, help="Global seed, as for expand (also picks the inputs).")
@click.option("--tile-size", default=160, show_default=True, type=click.IntRange(32, 1024),
              help="Pixels per tile side.")
@click.option("--allow-python-ops", is_flag=True,
              help="Allow `python` ops, which import and run code named in the config.")
@click.option("-o", "--output", default="preview.png", show_default=True,
              type=click.Path(dir_okay=False), help="The sheet to write (.png, .jpg or .webp).")
@click.option("--explain", is_flag=True, help="Caption each copy with what was done to it "
              "(the ops that ran and what they drew: angle, crop size, brightness delta...).")
def preview(config_path, inputs, num_inputs, copies, seed, tile_size, allow_python_ops,
            output, explain):
    """Draw a contact sheet of augmented copies, to check a config before a long run.

    One row per sampled input: the original (framed in blue), then copies 1..N, each
    captioned with its key, copy index and size. The tiles are what `expand` writes for
    those keys and copies with the same config and seed (decoded from the same encoded
    bytes), so a seed picked here reproduces exactly in expand. The sampled inputs depend
    only on the seed; inputs that would fail show their error instead.

    \b
    Examples:
      augbatch preview -c sample_configs/light_classification.yaml -o preview.png
      augbatch preview -c cfg.yaml -i data/train -n 4 --copies 6 --seed 7 -o look.png
      augbatch preview -c cfg.yaml --explain -o explained.png
    """
    from pipeline import config, preview as preview_mod
    job = config.load(config_path, overrides={"input": inputs or None, "output": "-",
                                              "seed": seed}, allow_python_ops=allow_python_ops)
    rows = preview_mod.write(job, output, num_inputs, copies, tile_size, explain)
    shown = max((len(row.copies) for row in rows), default=0)
    click.echo(f"preview: {output} ({len(rows)} inputs, original + {shown} copies each, "
               f"seed {job.seed})")
    for row in rows:
        if row.error:
            click.echo(f"  {row.key} would not be written: {row.error}")


@main.command("inspect")
@click.argument("target")
@click.option("--verify", is_flag=True, help="Also decode every image, check it against its "
              "declared size and the shards against manifest.json; exit 1 on any problem, "
              "naming the file and record index.")
@click.option("--sheet", type=click.Path(dir_okay=False),
              help="Draw a contact sheet of a random sample of the images (.png/.jpg/.webp).")
@click.option("--sample", default=24, show_default=True, type=click.IntRange(1, 500),
              help="Images on the sheet.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the sample (same seed, same images).")
@click.option("--image-key", help="Feature holding the encoded image  [default: the "
              "manifest's, else image/encoded]")
@click.option("--label-key", help="Integer feature holding the label  [default: the "
              "manifest's, else image/class/label]")
@click.option("--record", "record_ref", metavar="KEY:COPY", help="Show one record instead: "
              "its lineage and what each op of the chain did to it (augment/ops).")
def inspect_(target, verify, sheet, sample, seed, image_key, label_key, record_ref):
    """Summarize TFRecord files: counts, image sizes and formats, errors; optionally verify.

    TARGET is an output folder of `expand` (its manifest.json and errors.jsonl are read too),
    a TFRecord file, or a quoted glob. Any TFRecord files of tf.train.Example work, not only
    augbatch's. Counts are per file, per label and per copy index; image formats and sizes
    come from the image headers. Damaged files (bad CRC, cut short) are always reported.

    \b
    Examples:
      augbatch inspect out/
      augbatch inspect out/ --verify
      augbatch inspect 'data/train-*.tfrecord' --sheet sample.png --sample 36 --seed 1
      augbatch inspect data/ --image-key image/raw --label-key label
      augbatch inspect out/ --record objects/coffee_01.jpg:2
    """
    from pipeline import inspection
    if record_ref:
        from pipeline import replay as replay_mod
        found = replay_mod.find_record(target, *replay_mod.parse_ref(record_ref))
        for line in replay_mod.lineage_lines(found):
            click.echo(line)
        return
    if sheet:
        from pipeline import preview as preview_mod
        preview_mod.check_extension(sheet)
    report = inspection.scan(target, image_key=image_key, label_key=label_key, verify=verify,
                             sample=sample if sheet else 0, seed=seed)
    for line in inspection.lines(report):
        click.echo(line)
    if sheet:
        shown = inspection.write_sheet(report, sheet, seed=seed)
        click.echo(f"sheet: {sheet} ({shown} images)")
    if verify:
        verdict = inspection.verify_lines(report)
        for line in verdict:
            click.echo(line, err=bool(report.problems))
        if report.problems:
            click.get_current_context().exit(1)
    elif report.problems:
        click.echo(f"warning: {len(report.problems)} problems, e.g. {report.problems[0]} "
                   "(--verify lists them all)", err=True)


@main.command()
@click.argument("output_dir")
@click.argument("record_ref", metavar="KEY:COPY")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Also write the replayed copy as an image (.png, .jpg or .webp).")
@click.option("--allow-python-ops", is_flag=True,
              help="Allow the run's `python` ops, which import and run code named in its "
                   "config.")
@click.option("-i", "--input", "input_paths", multiple=True,
              help="Where the run's inputs are now, if they moved (as the run's --input: "
                   "the folder, files or glob; repeatable). Keys are paths under it.")
def replay(output_dir, record_ref, output, allow_python_ops, input_paths):
    """Make one copy again from its record and check it is the stored one, byte for byte.

    OUTPUT_DIR is the folder `augbatch expand` wrote; KEY:COPY names a record (copy 0 is the
    original). The run's config comes from its manifest.json; the input is read again from
    where the run read it (or --input). Refused (exit 2) if the record is not there, was
    written with another config, or its input is gone or changed. Exit 1 if the copy made
    again differs.

    \b
    Examples:
      augbatch replay out/ objects/coffee_01.jpg:2
      augbatch replay out/ objects/coffee_01.jpg:2 -o copy2.png
    """
    from pipeline import replay as replay_mod
    if output:
        from pipeline import preview as preview_mod
        preview_mod.check_extension(output)
    key, copy = replay_mod.parse_ref(record_ref)
    replayed = replay_mod.replay(output_dir, key, copy, allow_python_ops, input_paths)
    for line in replay_mod.lineage_lines(replayed.found):
        click.echo(line)
    if output:
        replay_mod.save_image(replayed, output)
        click.echo(f"image: {output}")
    if replayed.same_record:
        click.echo(f"replay: identical: {key} copy {copy} made again is the stored record, "
                   f"byte for byte (image {len(replayed.image)} bytes)")
    elif replayed.same_image:
        click.echo(f"replay: the image is identical, byte for byte ({len(replayed.image)} "
                   "bytes); other features of the record differ")
    else:
        click.echo(f"replay: DIFFERS: {key} copy {copy} made again is not the stored image",
                   err=True)
        click.get_current_context().exit(1)


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--allow-python-ops", is_flag=True, help="Accept `python` ops in the chain.")
def validate(config_path, allow_python_ops):
    """Check a config without running anything.

    \b
    Example:
      augbatch validate sample_configs/heavy_classification.yaml
    """
    from pipeline import chain, config, progress, sources
    job = config.load(config_path, allow_python_ops=allow_python_ops, require_paths=False)
    ops = [name for _, name in chain.op_paths(job.chain)]
    missing, kinds = [], set()
    if job.input_from == "input.path":  # the config names its inputs: do they exist?
        missing = sources.missing(job.input)
        if not missing:  # boxes, masks or keypoints in the inputs: can the chain carry them?
            from pipeline import targets
            from pipeline.errors import UserError
            try:
                discovery = sources.discover(job)
                kinds = targets.peek_kinds(discovery, job)
            except UserError:  # (expand says what is wrong with the inputs)
                discovery, kinds = None, set()
            targets.check_chain(job.chain, kinds)  # (refused: not called valid first)
            if discovery is not None:
                job = targets.with_dataset_keypoint_flip(job, discovery)
    click.echo(f"{config_path}: valid ({progress.plural(len(ops), 'op')}, config hash "
               f"{job.config_hash})")
    for pattern in missing:
        click.echo(f"warning: input.path {pattern}: no such file or folder (expand would "
                   "refuse it; --input can name another)", err=True)
    if kinds:
        click.echo(f"the inputs hold targets ({', '.join(sorted(kinds))}): every op carries "
                   "them")


@main.command("list-ops")
@click.option("--family", type=click.Choice(list(registry.FAMILY_MODULES)),
              help="Only this family.")
def list_ops(family):
    """List every augmentation op with its parameters (read from the registry).

    \b
    Example:
      augbatch list-ops --family tfa.image
    """
    for name, op in registry.all_ops(family).items():
        kind = "random" if op.random else "fixed"
        carries = {"unchanged": "targets unchanged", "transformed": "moves targets",
                   None: "images only"}[op.targets]
        click.echo(f"{name}  [{op.family}, {kind}, {carries}]  {op.doc}")
        for param in op.params:
            click.echo(f"    {param.describe()}")
    if family in (None, "tfa.image"):
        from pipeline.ops import tfa_image
        click.echo(f"tfa.image ops run on {tfa_image.BACKEND} (AUGBATCH_TFA_BACKEND=core forces "
                   "the pure-TensorFlow versions)")


def run():
    """The `augbatch` command: main, then the process ends at once with its exit code. Python's
    own shutdown would tear down TensorFlow's and Beam's modules and threads, ~1.4 s after every
    command (measured): by then a command has closed and committed everything it writes."""
    try:
        main()  # (click's standalone mode: it always ends in SystemExit)
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):  # sys.exit("message"), as Python does
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`augbatch list-ops | head`)
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    run()
