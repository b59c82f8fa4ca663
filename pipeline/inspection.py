"""`augbatch inspect`: what a set of TFRecord files holds, and whether every record is sound.

Works on any TFRecord files of tf.train.Example, not only augbatch's: the manifest and
errors.jsonl are read when present, and the image is found under `image/encoded` (or another
key). Every record is framed with its CRCs checked and parsed; image formats and sizes come
from the image headers; `verify` also decodes every image, as a training pipeline would.
"""
import collections
import dataclasses
import glob as globlib
import json
import os
import random
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from pipeline import sources
from pipeline.errors import UserError

MANIFEST, ERRORS = "manifest.json", "errors.jsonl"
LABEL_TEXT = "image/class/text"
CAPTION_KEYS = ("image/source_id", "image/filename")
MAX_LISTED_PROBLEMS = 20


@dataclasses.dataclass
class Sampled:
    shard: str
    index: int
    data: bytes
    caption: list
    features: object = None  # the record's feature map, for drawing its targets


@dataclasses.dataclass
class Report:
    target: str
    files: list
    image_key: str
    label_key: str
    manifest: Optional[dict] = None
    errors: Optional[list] = None  # errors.jsonl rows
    records: int = 0
    bytes: int = 0
    per_shard: dict = dataclasses.field(default_factory=dict)
    labels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    label_names: dict = dataclasses.field(default_factory=dict)
    copies: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    formats: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    sizes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    channels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    image_bytes: int = 0
    features: dict = dataclasses.field(default_factory=dict)  # key -> Counter of kinds
    objects: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    with_objects: int = 0  # records holding boxes (or a class mask)
    problems: list = dataclasses.field(default_factory=list)  # "shard record i: what"
    verified: bool = False
    sample: list = dataclasses.field(default_factory=list)

    def problem(self, shard, index, text):
        where = f"{os.path.basename(shard)} record {index}" if index is not None else \
            os.path.basename(shard)
        self.problems.append(f"{where}: {text}")


# --- finding the files ---------------------------------------------------------------------------

def _is_record_file(name):
    base = os.path.basename(name)
    return not base.startswith(".") and base not in (MANIFEST, ERRORS)


def find(target):
    """(folder, [record files]) for a folder, a file or a glob."""
    if globlib.has_magic(target):
        files = sorted(m.path for m in FileSystems.match([target])[0].metadata_list)
        folder = os.path.dirname(target.split("*")[0].rstrip("/")) or "."
        if not files:
            raise UserError(f"{target}: the pattern matches no file",
                            hint="quote the pattern so the shell does not expand it")
        return folder, [f for f in files if _is_record_file(f)]
    if not FileSystems.exists(target):
        raise UserError(f"{target}: no such file or folder",
                        hint="give an output folder of `augbatch expand`, TFRecord files, or a "
                             "quoted glob like 'data/train-*.tfrecord'")
    if "://" not in target and os.path.isfile(target):
        return os.path.dirname(target) or ".", [target]
    listing = FileSystems.match([FileSystems.join(target, "*")])[0].metadata_list
    names = sorted(m.path for m in listing if _is_record_file(m.path))
    records = [n for n in names if any(h in n.lower() for h in sources.TFRECORD_HINTS)]
    if not (records or names):
        raise UserError(f"{target}: no TFRecord files in this folder",
                        hint="give the folder `augbatch expand` wrote, or the files themselves")
    return target, records or names


def _read_json(path):
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read() or b"null")


def _read_errors(path):
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return [json.loads(line) for line in f.read().decode("utf-8").splitlines()
                if line.strip()]


# --- scanning ------------------------------------------------------------------------------------

def _kind(feature):
    return feature.WhichOneof("kind") or "empty"


def _first(feature):
    values = getattr(feature, _kind(feature), None)
    return values.value[0] if values is not None and len(values.value) else None


def scan(target, image_key=None, label_key=None, verify=False, sample=0, seed=0):
    """Read every record under `target` into a Report; `sample` records (seeded) are kept."""
    import tensorflow as tf
    from pipeline import transforms as T
    folder, files = find(target)
    manifest = _read_json(FileSystems.join(folder, MANIFEST))
    if image_key is None:
        image_key = ((manifest or {}).get("features", {}).get("image") or "image/encoded")
    if label_key is None:  # (output.tfds writes them under TFDS's keys)
        label_key = ((manifest or {}).get("features", {}).get("label") or "image/class/label")
    report = Report(target, files, image_key, label_key, manifest=manifest,
                    errors=_read_errors(FileSystems.join(folder, ERRORS)), verified=verify)
    rng, seen = random.Random(seed), 0
    for path in files:
        shard = os.path.basename(path)
        count = 0
        try:
            with sources.open_records(path) as stream:
                for index, record in enumerate(sources.iter_records(stream)):
                    count += 1
                    report.bytes += len(record)
                    row = _record(report, path, index, record, tf, T, verify)
                    if row is not None and sample:  # reservoir sampling: one pass, seeded
                        seen += 1
                        slot = seen - 1 if seen <= sample else rng.randrange(seen)
                        if slot < sample:
                            item = Sampled(shard, index, *row)
                            if seen <= sample:
                                report.sample.append(item)
                            else:
                                report.sample[slot] = item
        except sources.RecordError as e:
            report.problem(path, count, f"damaged file: {e}; the {count} records before it "
                           "were read")
        except OSError as e:
            report.problem(path, None, f"cannot read: {e}")
        report.per_shard[shard] = count
        report.records += count
    if verify and manifest:
        _check_manifest(report)
    return report


def _record(report, path, index, record, tf, T, verify):
    """Count one record; return (image bytes, caption, features) when it holds an image, else
    None."""
    try:
        example = tf.train.Example.FromString(record)
    except Exception as e:  # noqa: BLE001
        report.problem(path, index, f"not a tf.train.Example ({e})")
        return None
    features = example.features.feature
    for key, feature in features.items():
        report.features.setdefault(key, collections.Counter())[_kind(feature)] += 1
    label = features.get(report.label_key)
    if label is not None and _kind(label) == "int64_list":
        value = _first(label)
        report.labels[value] += 1
        text = features.get(LABEL_TEXT)
        if text is not None and _first(text) is not None:
            report.label_names.setdefault(value, _first(text).decode("utf-8", "replace"))
    copy = features.get("augment/copy_index")
    if copy is not None:
        report.copies[_first(copy)] += 1
    if not _count_objects(report, path, index, features, verify):
        return None
    image = features.get(report.image_key)
    if image is None or _kind(image) != "bytes_list" or len(image.bytes_list.value) != 1:
        if verify:
            report.problem(path, index, f"no single bytes value under '{report.image_key}'")
        return None
    data = image.bytes_list.value[0]
    report.image_bytes += len(data)
    try:
        fmt, width, height = T.sniff(data)
    except Exception as e:  # noqa: BLE001
        report.formats["unreadable"] += 1
        if verify:
            report.problem(path, index, f"'{report.image_key}' is not a readable image ({e})")
        return None
    report.formats[fmt] += 1
    report.sizes[(width, height)] += 1
    if verify and not _decodes(report, path, index, data, features, tf):
        return None
    names = [_first(features[k]) for k in CAPTION_KEYS if k in features]
    name = next((n.decode("utf-8", "replace") for n in names if n), None)
    caption = [name or f"{os.path.basename(path)}:{index}"]
    details = []
    if copy is not None:
        details.append("original" if _first(copy) == 0 else f"copy {_first(copy)}")
    if label is not None and _kind(label) == "int64_list":
        details.append(report.label_names.get(_first(label), f"label {_first(label)}"))
    details.append(f"{width}x{height}")
    return data, caption + [" · ".join(details)], features


def _count_objects(report, path, index, features, verify):
    """Count the record's objects by class; with verify, check its per-object lists agree,
    its boxes are normalised and its masks decode to the image's size. False: a problem."""
    from pipeline import targets
    if not targets.has_targets(features):
        return True
    report.with_objects += 1
    try:
        found = targets.from_features(features)
        if verify and "image/height" in features and "image/width" in features:
            targets.decode(found, _first(features["image/height"]), _first(features["image/width"]))
    except targets.TargetError as e:
        report.problem(path, index, f"targets: {e}")
        return not verify
    labels = found.objects.get(targets.CLASS_KEY, (None, []))[1]
    texts = found.objects.get(targets.CLASS_TEXT_KEY, (None, []))[1]
    for i in range(found.count):
        name = texts[i].decode("utf-8", "replace") if i < len(texts) else None
        label = labels[i] if i < len(labels) else None
        report.objects[f"{label if label is not None else '?'}{' ' + name if name else ''}"] += 1
    return True


def _decodes(report, path, index, data, features, tf):
    try:
        image = tf.io.decode_image(data, channels=0, expand_animations=False)
    except Exception as e:  # noqa: BLE001
        message = str(getattr(e, "message", e)).strip().splitlines()
        report.problem(path, index, f"image does not decode: {message[-1] if message else e}")
        return False
    shape = tuple(image.shape)
    report.channels[shape[2]] += 1
    for key, actual in (("image/height", shape[0]), ("image/width", shape[1]),
                        ("image/channels", shape[2])):
        if key in features and _first(features[key]) != actual:
            report.problem(path, index, f"{key} says {_first(features[key])} but the image "
                           f"has {actual}")
            return False
    return True


def _check_manifest(report):
    """The shards must hold what manifest.json says they hold."""
    expected = report.manifest.get("counts", {}).get("per_shard", {})
    for shard, records in sorted(expected.items()):
        found = report.per_shard.get(shard)
        if found is None:
            report.problem(shard, None, "listed in manifest.json but missing")
        elif found != records:
            report.problem(shard, None, f"holds {found} records, manifest.json says {records}")


# --- the report ----------------------------------------------------------------------------------

def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _share(n, total):
    return f"{n:>8}  ({100 * n / total:.1f}%)" if total else f"{n:>8}"


def lines(report):
    """The report as text lines, for people."""
    out = []
    m = report.manifest
    origin = ""
    if m:
        origin = (f" (augbatch {m.get('augbatch_version', '?')} output, config "
                  f"{m.get('config_hash', '?')}, seed {m.get('seed', '?')})")
    files = len(report.files)
    out.append(f"{report.target}: {files} file{'s' if files != 1 else ''}, "
               f"{report.records} records, {_size(report.bytes)}{origin}")
    out.append("records per file:")
    width = max((len(s) for s in report.per_shard), default=0)
    out += [f"  {shard:<{width}} {n:>8}" for shard, n in report.per_shard.items()]
    if report.labels:
        out.append(f"labels ({report.label_key}):")
        for label, n in sorted(report.labels.items()):
            name = f" {report.label_names[label]}" if label in report.label_names else ""
            out.append(f"  {f'{label}{name}':<24}{_share(n, report.records)}")
    if report.with_objects:
        total = sum(report.objects.values())
        out.append(f"objects (image/object/*): {total} in {report.with_objects} records, "
                   f"{total / report.with_objects:.1f} per record")
        for name, n in sorted(report.objects.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  {name:<24}{_share(n, total)}")
    if report.copies:
        out.append("copies (augment/copy_index):")
        for copy, n in sorted(report.copies.items()):
            out.append(f"  {f'{copy} (original)' if copy == 0 else str(copy):<24}"
                       f"{_share(n, report.records)}")
    images = sum(report.formats.values())
    if images:
        out.append(f"images ({report.image_key}):")
        out.append("  formats: " + ", ".join(f"{fmt} {n}" for fmt, n in
                                             report.formats.most_common()))
        if report.sizes:
            widths = [w for w, _ in report.sizes]
            heights = [h for _, h in report.sizes]
            common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common(5))
            more = (f", {len(report.sizes) - 5} more sizes" if len(report.sizes) > 5 else "")
            out.append(f"  sizes: {common}{more}")
            out.append(f"  width {min(widths)}-{max(widths)}, height "
                       f"{min(heights)}-{max(heights)}")
        if report.channels:
            out.append("  channels: " + ", ".join(f"{c} ({n})" for c, n in
                                                  sorted(report.channels.items())))
        out.append(f"  encoded: {_size(report.image_bytes / images)} mean, "
                   f"{_size(report.image_bytes)} total")
    elif report.records:
        out.append(f"images: none under '{report.image_key}' (pass --image-key to name the "
                   "feature holding them)")
    if report.features:
        out.append("features (kind, records holding it):")
        for key in sorted(report.features):
            kinds = report.features[key]
            kind = "/".join(k.replace("_list", "") for k in kinds)
            out.append(f"  {key:<28} {kind:<8} {sum(kinds.values()):>8}")
    out += _error_lines(report)
    if m:
        counts = m.get("counts", {})
        out.append(f"manifest: {counts.get('discovered', '?')} inputs = "
                   f"{counts.get('written', '?')} written + {counts.get('errored', '?')} "
                   f"errored; {counts.get('outputs', '?')} records listed, "
                   f"{report.records} found")
    return out


def _error_lines(report):
    if report.errors is None:
        return []
    if not report.errors:
        return ["errors.jsonl: no input failed"]
    keys = {e.get("key") for e in report.errors}
    out = [f"errors.jsonl: {len(keys)} input{'' if len(keys) == 1 else 's'} failed"]
    stages = collections.Counter(e.get("stage", "?") for e in report.errors)
    out.append("  by stage: " + ", ".join(f"{s} {n}" for s, n in stages.most_common()))
    reasons = collections.Counter((e.get("reason") or e.get("error_type") or "?")
                                  for e in report.errors)
    for reason, n in reasons.most_common(5):
        out.append(f"  {n:>6} x {reason}")
    for e in report.errors[:3]:
        out.append(f"  e.g. {e.get('key')}: {e.get('message')}")
    return out


def verify_lines(report):
    """The verdict of a verify run (the problems, at most MAX_LISTED_PROBLEMS of them)."""
    if not report.problems:
        return [f"verify: OK, all {report.records} records parse and their images decode"]
    out = [f"verify: FAILED, {len(report.problems)} problems:"]
    out += [f"  {p}" for p in report.problems[:MAX_LISTED_PROBLEMS]]
    if len(report.problems) > MAX_LISTED_PROBLEMS:
        out.append(f"  ... and {len(report.problems) - MAX_LISTED_PROBLEMS} more")
    return out


def write_sheet(report, path, columns=6, tile_size=160, seed=0):
    """The sampled images as a contact sheet."""
    import tensorflow as tf
    from pipeline import preview
    preview.check_extension(path)
    tiles = []
    for item in sorted(report.sample, key=lambda s: (s.shard, s.index)):
        image = tf.io.decode_image(item.data, channels=0, expand_animations=False).numpy()
        if item.features is not None:
            image = preview.draw_targets(image, item.features)
        tiles.append(preview.Tile(image, item.caption))
    grid = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    title = [f"augbatch inspect · {report.target} · {len(tiles)} of {report.records} records, "
             f"sampled with seed {seed}"]
    preview.save(preview.render(grid, title, tile_size), path)
    return len(tiles)
