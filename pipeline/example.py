"""The output tf.train.Example: the image, its label, its targets and its lineage."""
import collections
import functools
import hashlib
import json

import tensorflow as tf

# The features augbatch writes; passed-through input features of the same name are replaced.
FEATURE_KEYS = ("image/encoded", "image/format", "image/height", "image/width",
                "image/channels", "image/class/label", "image/class/text", "image/source_id",
                "augment/copy_index", "augment/seed", "augment/config_hash")
# What was done to the copy (output.record_ops, on by default): JSON, see ops_json.
OPS_KEY = "augment/ops"


def ops_json(input_sha256, ops):
    """The augment/ops value: the input's sha256 (its first 16 hex digits, to tell a changed
    input at replay) and one entry per op step of the chain (chain.op_records; [] for copy 0,
    the untouched input), as compact JSON."""
    return _compact_json({"input_sha256": input_sha256[:16], "ops": ops}).encode()


# json.dumps(..., separators=(",", ":")) without making an encoder per record
_compact_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def build(item, copy_index, data, fmt, shape, seed, config_hash, targets=None, tfds=False,
          ops=None):
    """Serialized Example for one output of `item` (a transforms.Input), with `targets`
    (targets.Targets, for an input that has them) in the OD API / DeepLab features.
    `tfds`: image, label and objects under TensorFlow Datasets' keys (tfds_output).
    `ops`: the augment/ops value (ops_json), or None (output.record_ops off: not written)."""
    if targets is not None or tfds:
        example = _message(item, copy_index, data, fmt, shape, seed, config_hash, targets, tfds,
                           ops)
    else:  # the features an input's copies share, set once (a third of the time per copy)
        example = tf.train.Example()
        example.CopyFrom(_shared(_Item(item.key, item.extra, item.label, item.label_text), fmt,
                                 tuple(shape), config_hash, ops is not None))
        feature = example.features.feature
        feature["image/encoded"].bytes_list.value[0] = data
        feature["augment/copy_index"].int64_list.value[0] = int(copy_index)
        feature["augment/seed"].int64_list.value[0] = int(seed)
        if ops is not None:
            feature[OPS_KEY].bytes_list.value[0] = ops
    # deterministic=True sorts the feature map, so equal examples give equal bytes.
    return example.SerializeToString(deterministic=True)


# What _message reads of a transforms.Input, hashable (_shared's cache key).
_Item = collections.namedtuple("_Item", "key extra label label_text")


@functools.lru_cache(maxsize=64)
def _shared(item, fmt, shape, config_hash, with_ops):
    """The Example of an input's copies without targets, its per-copy values left blank."""
    return _message(item, 0, b"", fmt, shape, 0, config_hash, None, False,
                    b"" if with_ops else None)


def _message(item, copy_index, data, fmt, shape, seed, config_hash, targets, tfds, ops):
    """build()'s tf.train.Example."""
    example = tf.train.Example()
    if item.extra:
        example.features.ParseFromString(item.extra)
    feature = example.features.feature

    def put(key, value, kind):  # in place: the image's bytes are copied once, not three times
        values = getattr(feature[key], kind).value
        del values[:]
        values.append(value)
    put("image/encoded", data, "bytes_list")
    put("image/format", fmt.encode(), "bytes_list")
    put("image/height", int(shape[0]), "int64_list")
    put("image/width", int(shape[1]), "int64_list")
    put("image/channels", int(shape[2]), "int64_list")
    if item.label is not None:
        put("image/class/label", int(item.label), "int64_list")
    if item.label_text is not None:
        put("image/class/text", item.label_text.encode(), "bytes_list")
    if targets is not None and "image/source_id" in feature:  # an OD API record's own id
        # (a COCO image id) stays; augbatch's key goes to its own lineage feature
        put("augment/key", item.key.encode(), "bytes_list")
    else:
        put("image/source_id", item.key.encode(), "bytes_list")
    if targets is not None:
        from pipeline import targets as targets_mod
        targets_mod.put(feature, targets)
        put("image/key/sha256", hashlib.sha256(data).hexdigest().encode(), "bytes_list")
    put("augment/copy_index", int(copy_index), "int64_list")
    put("augment/seed", int(seed), "int64_list")
    put("augment/config_hash", config_hash.encode(), "bytes_list")
    if ops is not None:
        put(OPS_KEY, ops, "bytes_list")
    elif OPS_KEY in feature:  # an input's own record of ops says nothing of this copy
        del feature[OPS_KEY]
    if tfds:
        from pipeline import tfds_output
        tfds_output.relayout(feature)
    return example
