"""The `augbatch` command line."""
import logging
import sys
import traceback

import click

from pipeline import __version__
from pipeline.errors import UserError

log = logging.getLogger("augbatch")


class AugbatchGroup(click.Group):
    """Turns user errors into one clear message and exit code 2 (a traceback only with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            if ctx.meta.get("augbatch.debug"):
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            if e.hint:
                click.echo(f"hint: {e.hint}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=AugbatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="augbatch")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def main(ctx, debug, quiet):
    """augbatch: N augmented copies of every image, as deterministic sharded TFRecords.

    \b
    Examples:
      augbatch expand --config sample_configs/light_classification.yaml --output out/
      augbatch list-ops --family tf.image
      augbatch validate sample_configs/mixed_chain.yaml
    """
    ctx.meta["augbatch.debug"] = debug
    ctx.meta["augbatch.quiet"] = quiet
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(level)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML or JSON config (input, output, augment chain).")
@click.option("-i", "--input", "inputs", multiple=True, help="Input folder, file or glob "
              "(repeatable). Overrides the config's input.")
@click.option("-o", "--output", help="Output directory for the shards and manifest.json.")
@click.option("--input-kind", type=click.Choice(["auto", "folder", "tfrecord"]))
@click.option("--copies", type=click.IntRange(0), help="Augmented copies per input.")
@click.option("--keep-original/--no-keep-original", default=None,
              help="Also write the untouched input as copy 0.")
@click.option("--seed", type=int, help="Global seed; every random draw derives from it.")
@click.option("--num-shards", type=click.IntRange(0), help="Output shards (0: by size).")
@click.option("--compression", type=click.Choice(["none", "gzip"]))
@click.option("--format", "format_", type=click.Choice(["jpeg", "png", "same"]),
              help="Output image format ('same': as the input, PNG for GIF/BMP).")
@click.option("--quality", type=click.IntRange(1, 100), help="JPEG quality.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Decode to 1 or 3 channels.")
@click.option("--batch-size", type=click.IntRange(1), help="Images per augmentation batch.")
@click.option("--allow-python-ops", is_flag=True,
              help="Allow `python` ops, which import and run code named in the config.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier run's output in a non-empty output directory.")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def expand(config_path, inputs, output, input_kind, copies, keep_original, seed, num_shards,
           compression, format_, quality, channels, batch_size, allow_python_ops, overwrite,
           beam_args):
    """Write N augmented copies of every input image as sharded TFRecords.

    Flags override the config. Anything after `--` goes to Apache Beam as pipeline options
    (the DirectRunner runs unless you name another).

    \b
    Examples:
      augbatch expand -c sample_configs/light_classification.yaml -o out/
      augbatch expand -c cfg.yaml -i 'data/train-*.tfrecord' -o out/ --copies 8 --seed 7
      augbatch expand -c cfg.yaml -o out/ -- --direct_num_workers=2 \\
          --direct_running_mode=multi_processing
    """
    from pipeline import config, run
    job = config.load(config_path, overrides={
        "input": inputs or None, "output": output, "input_kind": input_kind, "copies": copies,
        "keep_original": keep_original, "seed": seed, "num_shards": num_shards,
        "compression": compression, "format": format_, "quality": quality,
        "channels": int(channels) if channels else None, "batch_size": batch_size,
    }, allow_python_ops=allow_python_ops)
    manifest = run.run_expand(job, beam_args, overwrite=overwrite)
    counts = manifest["counts"]
    click.echo(f"inputs: {counts['discovered']}  written: {counts['written']}  "
               f"errored: {counts['errored']}  outputs: {counts['outputs']} records in "
               f"{manifest['output']['num_shards']} shards")
    for stage, n in sorted(manifest["errors_by_stage"].items()):
        click.echo(f"  errors at {stage}: {n}")
    click.echo(f"output: {job.output} (manifest.json, errors.jsonl)")


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--allow-python-ops", is_flag=True, help="Accept `python` ops in the chain.")
def validate(config_path, allow_python_ops):
    """Check a config without running anything.

    \b
    Example:
      augbatch validate sample_configs/heavy_classification.yaml
    """
    from pipeline import chain, config
    job = config.load(config_path, allow_python_ops=allow_python_ops, require_paths=False)
    ops = [name for _, name in chain.op_paths(job.chain)]
    click.echo(f"{config_path}: valid ({len(ops)} ops, config hash {job.config_hash})")


@main.command("list-ops")
@click.option("--family", type=click.Choice(["tf.image", "tfa.image", "keras.layers", "idg",
                                             "python"]), help="Only this family.")
def list_ops(family):
    """List every augmentation op with its parameters (read from the registry).

    \b
    Example:
      augbatch list-ops --family tfa.image
    """
    from pipeline.ops import registry
    for name, op in registry.all_ops(family).items():
        kind = "random" if op.random else "fixed"
        click.echo(f"{name}  [{op.family}, {kind}]  {op.doc}")
        for param in op.params:
            click.echo(f"    {param.describe()}")


if __name__ == "__main__":
    sys.exit(main())
