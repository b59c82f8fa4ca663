"""The output tf.train.Example: the image, its label and its lineage."""
import tensorflow as tf

# The features augbatch writes; passed-through input features of the same name are replaced.
FEATURE_KEYS = ("image/encoded", "image/format", "image/height", "image/width",
                "image/channels", "image/class/label", "image/class/text", "image/source_id",
                "augment/copy_index", "augment/seed", "augment/config_hash")


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def build(item, copy_index, data, fmt, shape, seed, config_hash):
    """Serialized Example for one output of `item` (a transforms.Input)."""
    example = tf.train.Example()
    if item.extra:
        example.features.ParseFromString(item.extra)
    feature = example.features.feature
    feature["image/encoded"].CopyFrom(_bytes(data))
    feature["image/format"].CopyFrom(_bytes(fmt.encode()))
    feature["image/height"].CopyFrom(_int(shape[0]))
    feature["image/width"].CopyFrom(_int(shape[1]))
    feature["image/channels"].CopyFrom(_int(shape[2]))
    if item.label is not None:
        feature["image/class/label"].CopyFrom(_int(item.label))
    if item.label_text is not None:
        feature["image/class/text"].CopyFrom(_bytes(item.label_text.encode()))
    feature["image/source_id"].CopyFrom(_bytes(item.key.encode()))
    feature["augment/copy_index"].CopyFrom(_int(copy_index))
    feature["augment/seed"].CopyFrom(_int(seed))
    feature["augment/config_hash"].CopyFrom(_bytes(config_hash.encode()))
    # deterministic=True sorts the feature map, so equal examples give equal bytes.
    return example.SerializeToString(deterministic=True)
