"""Config file (YAML or JSON) + command-line overrides -> one validated, typed `Job`.

Every error names the config path it is about (`augment.chain[2].max_delta: expected a number`).
Configs are data: YAML is read with `yaml.safe_load` only.
"""
import dataclasses
import hashlib
import json
import math
import numbers
import os
from typing import Optional

import yaml

from pipeline import chain as chain_mod
from pipeline import targets
from pipeline.errors import ConfigError, did_you_mean, quote

CONFIG_VERSION = 1
INPUT_KINDS = ("auto", "folder", "tfrecord", "coco", "yolo", "voc", "masks", "manifest")
FORMATS = ("jpeg", "png", "same")
COMPRESSIONS = ("none", "gzip")
DEVICES = ("auto", "cpu", "gpu")
# geometry.KERNELS (not imported here: no TensorFlow)
KERNELS = ("opencv-uint8", "opencv", "tensorflow")
# A config is a page of text: these bound what reading one may cost (a YAML alias "bomb"
# of a few hundred bytes can stand for billions of values).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything one `expand` run needs. Plain data: it is pickled to Beam workers."""
    input: tuple  # paths or globs
    output: str
    chain: tuple  # normalized steps (chain.normalize)
    copies: int = 4
    keep_original: bool = True
    seed: int = 0
    input_kind: str = "auto"
    channels: int = 3
    image_feature: str = "image/encoded"
    label_feature: str = "image/class/label"
    max_pixels: int = 50_000_000
    num_shards: int = 0  # 0 = pick from the input count
    compression: str = "none"
    format: str = "jpeg"
    quality: int = 95
    prefix: str = "augmented"
    # Images per augment call, copies included (never the bytes). 64, not 32: at 256x256 x 4
    # copies, 6-10% less wall time and 4-8% less CPU in a run (fewer hand-offs between Beam's
    # thread and TensorFlow's); 128 gained no more; augment.PIXELS_PER_BATCH caps large images.
    batch_size: int = 64
    device: str = "auto"
    tf_threads: int = 0  # TensorFlow ops at once, each on one thread; 0 = one per core
    xla: bool = False  # compile runs of colour steps with XLA (changes the draws: hashed)
    kernel: str = "opencv-uint8"  # geometric ops' resample on the CPU, no XLA (pixels: hashed)
    max_errors: Optional[int] = None  # fail the run past this many bad inputs (None: never)
    max_error_rate: Optional[float] = None  # ... or past this fraction of the inputs
    allow_python_ops: bool = False
    config_path: str = ""
    target_rules: targets.Rules = targets.Rules()  # boxes, masks, keypoints (section targets:)
    label_map: Optional[tuple] = None  # ((class folder name, label), ...) from input.labels
    augment_splits: tuple = ("train",)  # augment.splits: the splits given augmented copies
    images_dir: str = ""  # input.images: where a COCO JSON's images are, if not beside it
    input_from: str = "--input"  # where the inputs were named (or input.path), for messages
    plain_copies: bool = False  # copies with no chain, asked for (augment.plain_copies)
    exif_orientation: bool = True  # turn photos as their EXIF orientation says, at decode
    tfds: bool = False  # records and files in TensorFlow Datasets' layout (output.tfds)
    balance: Optional[tuple] = None  # ("copies", ((class, copies), ...)) or ("target", n)
    balance_plan: Optional[tuple] = None  # balance.make_plan's, made by the run from the inputs
    # Write augment/ops (what was done to each copy) in every record (output.record_ops). Not
    # hashed: the images do not depend on it; off, the records are as before it existed.
    record_ops: bool = True

    @property
    def config_hash(self):
        """Hash of everything that decides the output pixels (not paths or sharding)."""
        return config_hash(self)

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["input"], out["chain"] = list(self.input), _plain(self.chain)
        out["target_rules"] = _plain(out["target_rules"])
        out["label_map"] = dict(self.label_map) if self.label_map else None
        out["augment_splits"] = list(self.augment_splits)
        return out


def job_from_dict(data):
    """The Job a manifest.json's "config" (Job.to_dict) describes (replay); fields this
    augbatch does not know are left out."""
    def tuples(value):
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value
    fields = {f.name: data[f.name] for f in dataclasses.fields(Job) if f.name in data}
    for name in ("input", "augment_splits", "balance", "balance_plan"):
        if fields.get(name) is not None:
            fields[name] = tuples(fields[name])
    fields["chain"] = tuple(fields.get("chain") or ())
    rules = dict(fields.get("target_rules") or {})
    rules["keypoint_flip"] = tuple(rules.get("keypoint_flip") or ())
    fields["target_rules"] = targets.Rules(**rules)
    if fields.get("label_map"):
        fields["label_map"] = tuple(sorted(fields["label_map"].items(), key=lambda kv: kv[1]))
    return Job(**fields)


def config_hash(job):
    decisive = {"version": CONFIG_VERSION, "chain": _plain(job.chain), "copies": job.copies,
                "keep_original": job.keep_original, "seed": job.seed, "channels": job.channels,
                "format": job.format, "quality": job.quality}
    if job.xla:  # XLA draws other random numbers than TensorFlow's kernels
        decisive["xla"] = True
    elif job.kernel != "tensorflow":
        if _has_op(job.chain, _resamples):  # its pixels differ a little from TensorFlow's
            decisive["kernel"] = job.kernel
        if _has_op(job.chain, lambda op, params: op.uint8_native):
            # The op's first version computed them with OpenCV's addWeighted under an OpenCV
            # kernel, whose roundings differ a little: the records it wrote have another hash.
            decisive["uint8_ops"] = "tensorflow"
    if job.target_rules != targets.Rules():  # (the defaults keep earlier configs' hashes)
        decisive["targets"] = dataclasses.asdict(job.target_rules)
    if job.augment_splits != ("train",):  # which splits get copies
        decisive["augment_splits"] = list(job.augment_splits)
    if job.balance:  # how many copies each class gets
        decisive["balance"] = _plain(job.balance)
    if not job.exif_orientation:  # rotated photos are written as stored, not upright
        decisive["exif_orientation"] = False
    if job.label_map:  # the labels written
        decisive["label_map"] = dict(job.label_map)
    text = json.dumps(decisive, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _has_op(steps, test):
    """Whether a chain has an op step for which test(op, params) holds (in groups too)."""
    from pipeline.ops import registry
    for step in steps:
        if "op" in step:
            if test(registry.get(step["op"]), step["params"]):
                return True
        elif any(_has_op(step.get(kind, []), test) for kind in chain_mod.GROUPS):
            return True
    return False


def _resamples(op, params):
    """A geometric op that resamples: the kernel choice changes its pixels."""
    from pipeline.ops import geometry, registry
    return (op.targets == registry.TRANSFORMED
            and isinstance(op.build(params), geometry.Projective))


def _plain(value):
    """Tuples -> lists, recursively (JSON-shaped)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- reading the file --------------------------------------------------------------------------

def read_file(path):
    """The config file as a dict. YAML through safe_load only; `.json` through json."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}",
                          hint=f"check the path (relative paths start at {os.getcwd()}); "
                               "sample_configs/ has examples to copy") from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{path} is over {MAX_CONFIG_BYTES} bytes: not a config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{path} is not a text file (not UTF-8 at byte {e.start}): not "
                          "a YAML or JSON config") from None
    if "\0" in text:
        raise ConfigError("", f"{path} holds NUL bytes: not a YAML or JSON config")
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        raise ConfigError("", f"{path}: YAML tag {e.problem.split()[-1] if e.problem else ''} "
                          "is not allowed: configs are data, not code") from None
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError("", f"{path} is not valid {kind}: {str(e)[:500]}") from None
    except RecursionError:
        raise ConfigError("", f"{path} is nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: expected a mapping at the top, got {type(data).__name__}")
    check_data(data)
    return data


def check_data(data):
    """Refuse a config that expands (through YAML aliases) to more than MAX_CONFIG_VALUES
    values or MAX_CONFIG_DEPTH levels, refers to itself, or holds a number that is not finite
    (.nan, .inf: bounds checks pass NaN, and it would turn every image black) - before
    anything else reads it. A value shared through an alias is measured once."""
    sizes, open_ids = {}, set()

    def size(value, path, depth):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(path, f"{value} is not a finite number")
        if not isinstance(value, (dict, list)):
            return 1
        if id(value) in sizes:
            return sizes[id(value)]
        if id(value) in open_ids:
            raise ConfigError(path, "the value contains itself (a YAML alias inside its "
                                    "own anchor)")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(path, f"nested more than {MAX_CONFIG_DEPTH} levels deep")
        open_ids.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        total = 1
        for key, item in items:
            total += size(item, f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]",
                          depth + 1)
            if total > MAX_CONFIG_VALUES:
                raise ConfigError(path.lstrip(".") or "", f"the config expands to more than "
                                  f"{MAX_CONFIG_VALUES} values (YAML aliases repeating a "
                                  "value?); a config is far smaller")
        open_ids.discard(id(value))
        sizes[id(value)] = total
        return total

    for key, value in data.items():
        size(value, str(key), 1)


# --- the schema --------------------------------------------------------------------------------
# (section, key) -> (Job field, checker). Section None = top level.

def _int(low=None, high=None):
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(path, f"expected an integer, got {quote(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ConfigError(path, f"must be {bounds}, got {value}")
        return int(value)
    return check


def _choice(*choices):
    def check(value, path):
        if value not in choices:
            raise ConfigError(path, f"expected one of {', '.join(map(str, choices))}, got "
                              f"{quote(value)}" + did_you_mean(value, choices))
        return value
    return check


def _bool(value, path):
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {quote(value)}")
    return value


def _fraction(value, path):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ConfigError(path, f"expected a number between 0 and 1, got {quote(value)}")
    return float(value)


def _str(value, path):
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a non-empty string, got {quote(value)}")
    return value


def _paths(value, path):
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ConfigError(path, f"expected a path, a glob or a list of them, got {quote(value)}")


def _names(value, path):
    if isinstance(value, str) and value:
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(path, f"expected a list of split names (train, val, test ...), got "
                          f"{quote(value)}")
    return tuple(value)


def _prefix(value, path):
    value = _str(value, path)
    if "/" in value or "\\" in value or value.startswith("."):
        raise ConfigError(path, f"a file name prefix cannot contain '/' or start with '.': "
                          f"{quote(value)}")
    if len(value.encode("utf-8", "replace")) > MAX_PREFIX or any(
            ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(path, f"a file name prefix has at most {MAX_PREFIX} bytes and no "
                          f"control characters (NUL, newline...): {quote(value)}")
    return value


MAX_PREFIX = 200  # + '-00000-of-00000.tfrecord.gz' stays within a file name's 255 bytes


def _balance(value, path):
    """augment.balance: {copies: {class: copies, ...}} or {target: outputs per class}."""
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in (
            "copies", "target"):
        raise ConfigError(path, f"expected {{copies: {{class: copies, ...}}}} or {{target: "
                          f"outputs per class}}, got {quote(value)}")
    kind, spec = next(iter(value.items()))
    if kind == "target":
        return "target", _int(1, 10**9)(spec, f"{path}.target")
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{path}.copies", "expected a mapping class: copies (a class folder "
                          f"name or a label), got {quote(spec)}")
    rows = []
    for name, copies in spec.items():
        if isinstance(name, bool) or not isinstance(name, (str, int)) or name == "":
            raise ConfigError(f"{path}.copies", f"a class is a folder name or a label, got "
                              f"{quote(name)}")
        rows.append((name, _int(0, 10_000)(copies, f"{path}.copies.{name}")))
    return "copies", tuple(sorted(rows, key=lambda row: str(row[0])))


def _label_map(value, path):
    """input.labels: class folder names in label order, or a mapping name -> label."""
    if isinstance(value, list):
        value = {name: i for i, name in enumerate(value)} if all(
            isinstance(n, str) for n in value) and len(set(value)) == len(value) else None
    if not isinstance(value, dict) or not value:
        raise ConfigError(path, "expected a list of class folder names (label = position) "
                          "or a mapping name: label")
    for name, label in value.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(path, f"a class folder name is a non-empty string without '/', "
                              f"got {quote(name)}")
        _int(0, 2**63 - 1)(label, f"{path}.{name}")
    if len(set(value.values())) != len(value):
        raise ConfigError(path, "two class folders have the same label")
    return tuple(sorted(value.items(), key=lambda kv: kv[1]))


SCHEMA = {
    "input": {"path": ("input", _paths), "kind": ("input_kind", _choice(*INPUT_KINDS)),
              "channels": ("channels", _choice(1, 3)),
              "image_feature": ("image_feature", _str),
              "label_feature": ("label_feature", _str),
              "max_pixels": ("max_pixels", _int(1, 10**12)),
              "labels": ("label_map", _label_map), "images": ("images_dir", _str),
              "exif_orientation": ("exif_orientation", _bool)},
    "output": {"path": ("output", _str), "num_shards": ("num_shards", _int(0, 100_000)),
               "compression": ("compression", _choice(*COMPRESSIONS)),
               "format": ("format", _choice(*FORMATS)), "quality": ("quality", _int(1, 100)),
               "prefix": ("prefix", _prefix), "tfds": ("tfds", _bool),
               "record_ops": ("record_ops", _bool)},
    "augment": {"copies": ("copies", _int(0, 10_000)),
                "keep_original": ("keep_original", _bool), "seed": ("seed", _int(-2**63, 2**63 - 1)),
                "chain": ("chain", None), "splits": ("augment_splits", _names),
                "plain_copies": ("plain_copies", _bool), "balance": ("balance", _balance)},
    "runtime": {"batch_size": ("batch_size", _int(1, 4096)),
                "device": ("device", _choice(*DEVICES)), "tf_threads": ("tf_threads", _int(0)),
                "xla": ("xla", _bool), "kernel": ("kernel", _choice(*KERNELS))},
    # Bad inputs are always reported in errors.jsonl; past these limits the run also fails.
    "errors": {"max_errors": ("max_errors", _int(0)),
               "max_error_rate": ("max_error_rate", _fraction)},
}


def _non_negative(value, path):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value
            or value < 0 or value == float("inf")):
        raise ConfigError(path, f"expected a finite number >= 0, got {value!r}")
    return float(value)


def _permutation(value, path):
    if (not isinstance(value, list) or sorted(value) != list(range(len(value)))
            or any(isinstance(v, bool) for v in value)):
        raise ConfigError(path, "expected a permutation of the keypoint slots, e.g. [0, 2, 1, "
                          f"4, 3] (slot i takes the keypoint from slot value[i]), got {value!r}")
    return tuple(value)


# targets: rules for boxes, masks and keypoints (targets.Rules); part of the config hash.
TARGET_RULES = {"min_visibility": _fraction, "min_area": _non_negative,
                "min_side": _non_negative, "keep_empty": _bool,
                "ignore_label": _int(0, 255), "keypoint_flip": _permutation}
TOP_LEVEL = {"version", "targets", *SCHEMA}


def _fields_from(data):
    """Config dict -> {Job field: value} (chain still raw)."""
    unknown = [k for k in data if k not in TOP_LEVEL]
    if unknown:
        raise ConfigError(unknown[0], "unknown key" + did_you_mean(unknown[0], TOP_LEVEL),
                          hint=f"top-level keys: {', '.join(sorted(TOP_LEVEL))}")
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError("version", f"this augbatch reads config version {CONFIG_VERSION}, "
                          f"got {version!r}")
    fields = {}
    rules = data.get("targets")
    if rules is not None:
        if not isinstance(rules, dict):
            raise ConfigError("targets", f"expected a mapping, got {rules!r}")
        checked = {}
        for key, value in rules.items():
            if key not in TARGET_RULES:
                raise ConfigError(f"targets.{key}", "unknown key" + did_you_mean(key, TARGET_RULES),
                                  hint=f"keys of targets: {', '.join(sorted(TARGET_RULES))}")
            checked[key] = TARGET_RULES[key](value, f"targets.{key}")
        fields["target_rules"] = targets.Rules(**checked)
    for section, keys in SCHEMA.items():
        value = data.get(section)
        if value is None:
            continue
        if section in ("input", "output") and not isinstance(value, dict):
            value = {"path": value}  # `input: some/dir` is short for `input: {path: some/dir}`
        if not isinstance(value, dict):
            raise ConfigError(section, f"expected a mapping, got {quote(value)}")
        for key, item in value.items():
            if key not in keys:
                raise ConfigError(f"{section}.{key}", "unknown key" + did_you_mean(key, keys),
                                  hint=f"keys of {section}: {', '.join(sorted(keys))}")
            field, check = keys[key]
            fields[field] = check(item, f"{section}.{key}") if check else item
    return fields


def load(config_path=None, overrides=None, allow_python_ops=False, require_paths=True):
    """Read the config (if any), apply command-line overrides (Job field -> value, None = not
    given), validate everything, and return the Job. `require_paths=False` (validate, preview)
    accepts a config without input or output."""
    data = read_file(config_path) if config_path else {}
    fields = _fields_from(data)
    checks = {field: check for keys in SCHEMA.values() for field, check in keys.values()}
    for field, value in (overrides or {}).items():
        if value is not None:
            if field == "input":
                value = list(value)
            check = checks.get(field)
            # A flag is checked as its config key is (an unset shell variable gives '').
            fields[field] = check(value, "--" + field.replace("_", "-")) if check else value
    if fields.get("input") and (overrides or {}).get("input") is None:
        fields["input_from"] = "input.path"  # a missing input blames the config, not --input
    if not require_paths:
        fields.setdefault("input", ("-",))
        fields.setdefault("output", "-")
    if not fields.get("input"):
        raise ConfigError("input", "no input given", hint="set `input:` in the config or pass "
                          "--input PATH_OR_GLOB")
    if not fields.get("output"):
        raise ConfigError("output", "no output directory given",
                          hint="set `output:` in the config or pass --output DIR")
    fields["chain"] = tuple(chain_mod.normalize(fields.get("chain", []),
                                                allow_python_ops=allow_python_ops))
    fields["allow_python_ops"] = allow_python_ops
    fields["config_path"] = os.path.abspath(config_path) if config_path else ""
    job = Job(**fields)
    check_changes(job)
    if job.tfds and job.compression != "none":
        raise ConfigError("output.tfds", "TensorFlow Datasets reads uncompressed TFRecord "
                          "files only", hint="set output.compression: none (or read gzip "
                          "shards with tf.data, as README shows)")
    return job


def check_changes(job):
    """Refuse copies that would all be the input again: an empty chain with copies > 0 (a
    forgotten or mistyped chain), unless plain copies are asked for (augment.plain_copies);
    and a class balanced to 0 copies without copy 0 (its inputs would vanish)."""
    if job.balance and job.balance[0] == "copies" and not job.keep_original:
        for name, copies in job.balance[1]:
            if copies == 0:
                raise ConfigError(f"augment.balance.copies.{name}", "0 copies with "
                                  "keep_original false: its inputs would not be written")
    if ((job.copies or job.balance) and not job.plain_copies
            and not any(chain_mod.op_paths(job.chain))):
        raise ConfigError("augment.chain", f"nothing would change: {job.copies} identical "
                          f"cop{'y' if job.copies == 1 else 'ies'} of each input (the chain "
                          "has no op)",
                          hint="add ops to augment.chain (augbatch list-ops), or set "
                               "augment.copies: 0 (--copies 0) to write the inputs only, or "
                               "augment.plain_copies: true (--plain-copies) if identical "
                               "copies are what you want")
