"""What was done to a copy: reading an output record's augment/ops (written by
transforms.AugmentAndEncode from chain.op_records), for `inspect --record`, `preview --explain`
and `augbatch replay`, which re-renders one copy from its record and the run's manifest.json
and checks that it is the stored one, byte for byte.
"""
import dataclasses
import json
import os

from pipeline import sources
from pipeline.errors import UserError
from pipeline.example import OPS_KEY


def parse_ref(text):
    """'KEY:COPY' -> (key, copy index). Keys may hold ':' (a TFRecord input's file:index)."""
    key, _, copy = text.rpartition(":")
    if not key or not copy.isdigit():
        raise UserError(f"{text!r} is not KEY:COPY",
                        hint="e.g. objects/coffee_01.jpg:2 (copy 0 is the original); "
                             "`augbatch inspect OUTPUT` lists the copies")
    return key, int(copy)


# --- finding a record ----------------------------------------------------------------------------

@dataclasses.dataclass
class Found:
    shard: str
    index: int
    payload: bytes  # the serialized record
    features: object  # its feature map

    def value(self, key, default=None):
        feature = self.features.get(key)
        if feature is None:
            return default
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value if kind else []
        if not values:
            return default
        value = values[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    def raw(self, key):
        """The bytes of a bytes feature (b"" if absent)."""
        feature = self.features.get(key)
        return feature.bytes_list.value[0] if feature is not None and \
            feature.bytes_list.value else b""

    @property
    def ops(self):
        """The record's augment/ops as a dict, or None (written with output.record_ops off)."""
        text = self.value(OPS_KEY)
        return json.loads(text) if text else None


def record_key(features):
    """The augbatch key of a record (augment/key where the input had its own source id)."""
    for name in ("augment/key", "image/source_id"):
        if name in features and features[name].bytes_list.value:
            return features[name].bytes_list.value[0].decode("utf-8", "replace")
    return None


def find_record(target, key, copy):
    """The record of (key, copy) under `target` (an output folder, files or a glob)."""
    import tensorflow as tf
    from pipeline import inspection
    _, files = inspection.find(target)
    copies = []
    for path in files:
        with sources.open_records(path) as stream:
            for index, record in enumerate(sources.iter_records(stream)):
                features = tf.train.Example.FromString(record).features.feature
                if record_key(features) != key:
                    continue
                found = Found(path, index, record, features)
                if found.value("augment/copy_index") == copy:
                    return found
                copies.append(found.value("augment/copy_index"))
    if copies:
        raise UserError(f"{target}: {key} has no copy {copy} (it has copies "
                        f"{', '.join(map(str, sorted(copies)))})")
    raise UserError(f"{target}: no record of key {key}",
                    hint="keys are the input's path under its folder (objects/a.jpg) or "
                         "file:index for TFRecord inputs; `augbatch inspect --sheet` shows some")


# --- reading it ----------------------------------------------------------------------------------

def _number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(entry):
    """One op entry (chain.op_records) as words: 'flip x, box [0 0 160 120]'."""
    if not entry.get("ran"):
        return f"skipped ({entry.get('by')})"
    if entry.get("identity"):
        return "no move this time (identity)"
    parts = []
    for name in ("flip", "angle", "scale", "shift", "box", "matrix", "drew", "seed"):
        if name not in entry:
            continue
        value = entry[name]
        if isinstance(value, list):
            value = "[" + " ".join(_number(v) for v in value) + "]"
        elif isinstance(value, float):
            value = _number(value)
        parts.append(f"{name} {value}" + ("°" if name == "angle" else ""))
    return ", ".join(parts) or "applied"


def lineage_lines(found):
    """The record's lineage and its ops, one line each."""
    from pipeline import tfds_output
    image = found.raw("image/encoded") or found.raw(tfds_output.IMAGE)  # (output.tfds's key)
    out = [f"{found.value('augment/key') or found.value('image/source_id')} copy "
           f"{found.value('augment/copy_index')}: {os.path.basename(found.shard)} record "
           f"{found.index}",
           f"  seed {found.value('augment/seed')}, config hash "
           f"{found.value('augment/config_hash')}",
           f"  image {found.value('image/format')} {found.value('image/width')}x"
           f"{found.value('image/height')}, {len(image)} bytes"]
    ops = found.ops
    if ops is None:
        return out + ["  ops: not recorded (written with output.record_ops: false)"]
    out.append(f"  input sha256 {ops['input_sha256']}…")
    if not ops["ops"]:
        return out + ["  ops: none (the original, untouched)"]
    out.append(f"  ops ({sum(1 for e in ops['ops'] if e.get('ran'))} of {len(ops['ops'])} "
               "applied):")
    width = max(len(e["at"]) for e in ops["ops"])
    for entry in ops["ops"]:
        out.append(f"    {entry['at']:<{width}}  {entry['op']}: {describe(entry)}")
    return out


def caption(entries, width=26, lines=3):
    """A short caption of the ops that ran, for a preview tile: lines of at most about
    `width` characters, e.g. ['flip x · rotate 7.2°', 'crop 120x90 · brightness 0.04']."""
    words = []
    for entry in entries:
        if not entry.get("ran") or entry.get("identity"):
            continue
        name = entry["op"].rsplit(".", 1)[-1].replace("stateless_", "").replace("random_", "")
        if "angle" in entry:
            detail = f"{entry['angle']:g}°"
        elif "shift" in entry:
            detail = "shift " + ",".join(f"{v:+g}" for v in entry["shift"])
        elif "box" in entry:
            x0, y0, x1, y1 = entry["box"]
            detail = f"crop {x1 - x0:.0f}x{y1 - y0:.0f}"
        elif "flip" in entry:
            detail = f"flip {entry['flip']}"
            name = ""
        elif "drew" in entry and len(entry["drew"]) == 1:
            detail = _number(entry["drew"][0])
        else:
            detail = ""
        words.append(f"{name} {detail}".strip())
    if not words:
        return ["no op applied"]
    out = [""]
    for word in words:
        joined = f"{out[-1]} · {word}" if out[-1] else word
        if len(joined) <= width or not out[-1]:
            out[-1] = joined
        else:
            out.append(word)
    return out[:lines - 1] + [" · ".join(out[lines - 1:])] if len(out) > lines else out


# --- replay --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Replayed:
    found: Found  # the stored record
    payload: bytes  # the record made again
    image: bytes  # its encoded image

    @property
    def same_image(self):
        return self.image == self.found.raw("image/encoded")

    @property
    def same_record(self):
        return self.payload == self.found.payload


def load_job(output_dir, allow_python_ops=False):
    """The Job of the run that wrote `output_dir`, from its manifest.json."""
    from pipeline import chain, config, inspection
    from apache_beam.io.filesystems import FileSystems
    manifest = inspection._read_json(FileSystems.join(output_dir, inspection.MANIFEST))
    if not isinstance(manifest, dict) or "config" not in manifest:
        raise UserError(f"{output_dir}: no manifest.json of an augbatch run",
                        hint="give the output folder `augbatch expand` wrote (replay reads "
                             "the run's config from its manifest.json)")
    try:
        job = config.job_from_dict(manifest["config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{output_dir}/manifest.json: cannot read its config ({e})") from None
    if job.config_hash != manifest.get("config_hash"):
        raise UserError(f"{output_dir}/manifest.json: its config hashes to {job.config_hash} "
                        f"here, the run wrote {manifest.get('config_hash')}: made by another "
                        f"augbatch ({manifest.get('augbatch_version', '?')}) or edited",
                        hint="replay with the augbatch version that wrote the output")
    if job.tfds:
        raise UserError(f"{output_dir}: written in TensorFlow Datasets' layout (output.tfds); "
                        "replay reads augbatch's own layout")
    if not allow_python_ops and any(name == "python" for _, name in chain.op_paths(job.chain)):
        raise UserError(f"{output_dir}: the run's chain has `python` ops, which run code named "
                        "in its config", hint="pass --allow-python-ops to run them")
    return job


def read_input(job, key):
    """The Input of `key`, read again as expand read it (from the run's input paths)."""
    from pipeline import preview
    from pipeline import transforms as T
    gone = sources.missing(job.input)
    if gone:
        raise UserError(f"the run's input {sources.printable(gone[0])} is not there any more",
                        hint="if it moved, pass --input with where it is now (keys are paths "
                             "under it); relative paths start at the folder you run augbatch in")
    discovery = sources.discover(job)
    file_key = key.rpartition(":")[0] if discovery.kind == "tfrecord" else key
    for ref in discovery.refs:
        if ref.key == file_key:
            for out in map(preview._unwrap, preview.reader(job, discovery).process(ref)):
                if getattr(out, "key", None) == key:
                    if isinstance(out, T.ErrorRecord):
                        raise UserError(f"input {key} cannot be read any more: {out.message}")
                    return out
    raise UserError(f"input {key} is gone: not found in {', '.join(job.input)}",
                    hint="replay reads the run's inputs again, from where the run read them "
                         "(relative paths start at the folder you run augbatch in)")


def replay(output_dir, key, copy, allow_python_ops=False, inputs=()):
    """Make the record of (key, copy) again from the run's config and its input (read from
    `inputs` instead of the run's paths if given: they moved): Replayed. Refuses (UserError) a
    record of another config, a missing record, a changed input."""
    from pipeline import preview
    from pipeline import transforms as T
    job = load_job(output_dir, allow_python_ops)
    if inputs:
        job = dataclasses.replace(job, input=tuple(inputs))
    found = find_record(output_dir, key, copy)
    if found.value("augment/config_hash") != job.config_hash:
        raise UserError(f"{key} copy {copy} in {os.path.basename(found.shard)} was written "
                        f"with config hash {found.value('augment/config_hash')}, the run's "
                        f"manifest.json says {job.config_hash}: not this run's record")
    item = read_input(job, key)
    ops = found.ops
    if ops is not None and item.sha256[:16] != ops["input_sha256"]:
        raise UserError(f"input {key} ({sources.printable(item.source)}) has changed since the "
                        f"run: its sha256 starts {item.sha256[:16]}, the record says "
                        f"{ops['input_sha256']}")
    decode = T.DecodeImage(job.channels, job.max_pixels, job.exif_orientation)
    decode.setup()
    decoded = preview._unwrap(next(iter(decode.process(item))))
    if isinstance(decoded, T.ErrorRecord):
        raise UserError(f"input {key} does not decode any more: {decoded.message}")
    # Copy c is the same whatever the number of copies: make copies 1..c (or only copy 0).
    again = dataclasses.replace(job, copies=copy, keep_original=copy == 0, balance=None,
                                balance_plan=None)
    augment = T.AugmentAndEncode(again, job.config_hash)
    augment.setup()
    try:
        outputs = list(map(preview._unwrap, augment.process_now([decoded])))
    finally:
        augment.teardown()
    failed = [r for r in outputs if isinstance(r, T.ErrorRecord)]
    if failed:
        raise UserError(f"input {key} failed at {failed[0].stage}: {failed[0].message}")
    record = next((r for r in outputs if isinstance(r, T.OutputRecord)
                   and r.copy_index == copy), None)
    if record is None:  # (the target rules dropped it: it would not have been written)
        raise UserError(f"{key} copy {copy}: the replay writes no such copy")
    import tensorflow as tf
    image = tf.train.Example.FromString(record.payload).features.feature[
        "image/encoded"].bytes_list.value[0]
    return Replayed(found, record.payload, image)


def save_image(replayed, path):
    """The replayed copy's pixels as an image file (.png, .jpg, .webp)."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from pipeline import preview
    extension = preview.check_extension(path)
    pixels = tf.io.decode_image(replayed.image, channels=0, expand_animations=False).numpy()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else np.asarray(pixels))
    image.save(path, **({"quality": 95} if extension != ".png" else {}))
