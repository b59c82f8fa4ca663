"""TensorFlow Datasets layout (output.tfds: true): an output folder that
`tfds.builder_from_directory(OUTPUT)` loads with no extra code.

Two parts:
  * the records: the image under "image", the class label under "label", boxes under
    "objects/bbox" ([N, 4] normalised ymin, xmin, ymax, xmax: TFDS's BBoxFeature) with their
    classes under "objects/label", instance masks under "objects/mask", a class mask under
    "segmentation_mask" - the keys TFDS's example parser reads for the FeaturesDict described
    below (it ignores the other features: lineage, image/height, the OD API box lists stay);
  * beside the shards: dataset_info.json (the splits, each shard's length, the shards' file
    name template, so the shards keep augbatch's names), features.json (the FeaturesDict) and
    label.labels.txt (the ClassLabel's names).
augbatch writes these itself (TFDS's JSON forms of DatasetInfo and FeaturesDict): TFDS is
needed to read them, not to write them. TFDS reads uncompressed TFRecord files only.
"""
import json
import re

from pipeline import targets

IMAGE, LABEL = "image", "label"
BBOX, OBJECT_LABEL, OBJECT_MASK = "objects/bbox", "objects/label", "objects/mask"
CLASS_MASK = "segmentation_mask"
INFO_FILE, FEATURES_FILE, LABELS_FILE = "dataset_info.json", "features.json", "label.labels.txt"
FILES = (INFO_FILE, FEATURES_FILE, LABELS_FILE)
VERSION = "1.0.0"
_TFDS = "tensorflow_datasets.core.features."


# --- the records -------------------------------------------------------------------------------

def _move(feature, old, new):
    if old in feature:
        feature[new].CopyFrom(feature[old])
        del feature[old]


def relayout(feature):
    """An output tf.train.Example's feature map (augbatch's keys) -> TFDS's keys, in place."""
    _move(feature, "image/encoded", IMAGE)
    _move(feature, "image/class/label", LABEL)
    if all(key in feature for key in targets.BOX_KEYS):  # (kept: OD API readers read them)
        columns = [feature[key].float_list.value for key in targets.BOX_KEYS]
        feature[BBOX].float_list.SetInParent()
        feature[BBOX].float_list.value.extend(v for box in zip(*columns) for v in box)
        if targets.CLASS_KEY in feature:
            feature[OBJECT_LABEL].CopyFrom(feature[targets.CLASS_KEY])
    _move(feature, targets.MASK_KEY, OBJECT_MASK)
    _move(feature, targets.CLASS_MASK_KEY, CLASS_MASK)


# --- the files beside the shards ---------------------------------------------------------------

def _image(channels):
    return {"pythonClassName": _TFDS + "image_feature.Image",
            "image": {"shape": {"dimensions": ["-1", "-1", str(channels)]}, "dtype": "uint8"}}


def _tensor(dtype, shape=()):
    return {"pythonClassName": _TFDS + "tensor_feature.Tensor",
            "tensor": {"shape": {"dimensions": [str(d) for d in shape]} if shape else {},
                       "dtype": dtype, "encoding": "none"}}


def _dict(features):
    return {"pythonClassName": _TFDS + "features_dict.FeaturesDict",
            "featuresDict": {"features": features}}


def features(channels, num_classes, kinds):
    """features.json: image, label (a ClassLabel, when every record has one) and the
    objects / masks of `kinds` (targets' kinds of target)."""
    out = {IMAGE: _image(channels)}
    if num_classes:
        out[LABEL] = {"pythonClassName": _TFDS + "class_label_feature.ClassLabel",
                      "classLabel": {"numClasses": str(num_classes)}}
    objects = {}
    if targets.BOXES in kinds:
        objects["bbox"] = {"pythonClassName": _TFDS + "bounding_boxes.BBoxFeature",
                           "boundingBox": {"shape": {"dimensions": ["4"]}, "dtype": "float32",
                                           "bboxFormat": "REL_YXYX"}}
        objects["label"] = _tensor("int64")
    if targets.MASKS in kinds:
        objects["mask"] = _image(1)
    if objects:
        out["objects"] = {"pythonClassName": _TFDS + "sequence_feature.Sequence",
                          "sequence": {"feature": _dict(objects), "length": "-1"}}
    if targets.CLASS_MASK in kinds:
        out[CLASS_MASK] = _image(1)
    return {"type": _TFDS + "features_dict.FeaturesDict", "content": {"features": out},
            "proto_cls": "tensorflow_datasets.FeaturesDict"}


def template(shard_name):
    """TFDS's file name template of the shards named like `shard_name`."""
    return re.sub(r"\d{5,}-of-\d{5,}", "{SHARD_X_OF_Y}", shard_name, count=1)


def class_names(labels, names):
    """The ClassLabel's names, label i at line i: `labels` the labels written (ints),
    `names` label -> class name (a gap or an unnamed label is its number). A named class with
    no record (an empty class folder, one whose inputs all failed) is still a class."""
    return [names.get(i, str(i)) for i in range(max([*labels, *names]) + 1)]


def files(shards, labels, names, channels, kinds, description):
    """{file name: text} of the files beside the shards.

    shards: [{"shard": name, "records": n, "bytes": size, "split": name (default train)}];
    labels: the labels of the records written (None: a record without a label: then no
    ClassLabel is declared); names: label -> class name; kinds: the targets' kinds."""
    labelled = labels and None not in labels and min(labels) >= 0
    splits = {}
    for shard in sorted(shards, key=lambda s: s["shard"]):
        splits.setdefault(shard.get("split") or "train", []).append(shard)
    info = {"name": "augbatch", "version": VERSION, "fileFormat": "tfrecord",
            "description": description,
            "splits": [{"name": split, "shardLengths": [str(s["records"]) for s in members],
                        "numBytes": str(sum(s["bytes"] for s in members)),
                        "filepathTemplate": template(members[0]["shard"])}
                       for split, members in sorted(splits.items())]}
    if labelled:
        info["supervisedKeys"] = {"tuple": {"items": [{"featureKey": IMAGE},
                                                      {"featureKey": LABEL}]}}
    out = {INFO_FILE: json.dumps(info, indent=2, sort_keys=True),
           FEATURES_FILE: json.dumps(features(
               channels, len(class_names(labels, names)) if labelled else 0, kinds), indent=2,
               sort_keys=True)}
    if labelled:
        out[LABELS_FILE] = "".join(name + "\n" for name in class_names(labels, names))
    return out
