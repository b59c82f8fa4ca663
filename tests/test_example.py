"""The output record: built from the features an input's copies share (set once) plus each
copy's own, it is the same message, byte for byte, as one built whole, whatever the input
passes through (its own features, a record of ops of its own) and in any order of calls."""
import itertools

import tensorflow as tf

from pipeline import example
from pipeline.transforms import Input


def passed_through(**features):
    """Serialized tf.train.Features, as an input read from TFRecords passes them on."""
    message = tf.train.Features()
    for key, value in features.items():
        if isinstance(value, bytes):
            message.feature[key].bytes_list.value.append(value)
        elif isinstance(value, float):
            message.feature[key].float_list.value.append(value)
        else:
            message.feature[key].int64_list.value.append(value)
    return message.SerializeToString(deterministic=True)


INPUTS = [
    Input(key="cats/a.jpg", source="/data/cats/a.jpg", record_index=None, data=b"a",
          label=0, label_text="cats"),
    Input(key="b.png", source="/data/b.png", record_index=None, data=b"b", label=None,
          label_text=None),
    # From TFRecords: features of its own, some with augbatch's names (which augbatch's
    # values replace, whatever their kind) and a record of ops of its own (dropped).
    Input(key="train.tfrecord:7", source="/data/train.tfrecord", record_index=7, data=b"c",
          label=5, label_text="", extra=passed_through(**{
              "image/width": 3.5, "image/class/label": 9, "z/extra": b"kept",
              "image/source_id": b"theirs", "augment/ops": b"[]", "a/first": 1})),
]


def whole(item, copy_index, data, seed, ops):
    """The record built whole, as the message path builds it."""
    return example._message(item, copy_index, data, "jpeg", (20, 30, 3), seed, "f" * 16,
                            None, False, ops).SerializeToString(deterministic=True)


def test_a_copy_is_the_record_built_whole():
    calls = list(itertools.product(INPUTS, [1, 2], [b"\xff\xd8 one", b"\xff\xd8 two" * 999],
                                   [0, 123456789, -5, 2 ** 40], [None, b'{"ops":[]}']))
    built = [example.build(item, copy_index, data, "jpeg", (20, 30, 3), seed, "f" * 16,
                           ops=ops) for item, copy_index, data, seed, ops in calls]
    assert built == [whole(*call) for call in calls]
    assert len(set(built)) == len(built)
    # Again in reverse order: what a copy set is not left for the next one.
    again = [example.build(item, copy_index, data, "jpeg", (20, 30, 3), seed, "f" * 16,
                           ops=ops) for item, copy_index, data, seed, ops in reversed(calls)]
    assert again[::-1] == built


def test_what_a_record_holds():
    record = tf.train.Example.FromString(example.build(
        INPUTS[2], 3, b"pixels", "png", (20, 30, 3), -5, "f" * 16, ops=b"{}"))
    feature = record.features.feature
    assert feature["image/encoded"].bytes_list.value == [b"pixels"]
    assert feature["image/format"].bytes_list.value == [b"png"]
    assert list(feature["image/width"].int64_list.value) == [30]
    assert not feature["image/width"].float_list.value
    assert list(feature["image/class/label"].int64_list.value) == [5]
    assert feature["image/class/text"].bytes_list.value == [b""]
    assert feature["image/source_id"].bytes_list.value == [b"train.tfrecord:7"]
    assert feature["z/extra"].bytes_list.value == [b"kept"]
    assert list(feature["a/first"].int64_list.value) == [1]
    assert list(feature["augment/copy_index"].int64_list.value) == [3]
    assert list(feature["augment/seed"].int64_list.value) == [-5]
    assert feature["augment/ops"].bytes_list.value == [b"{}"]
    without = tf.train.Example.FromString(example.build(
        INPUTS[2], 3, b"pixels", "png", (20, 30, 3), -5, "f" * 16, ops=None))
    assert "augment/ops" not in without.features.feature
    unlabelled = tf.train.Example.FromString(example.build(
        INPUTS[1], 1, b"pixels", "png", (20, 30, 3), 1, "f" * 16))
    assert "image/class/label" not in unlabelled.features.feature
    assert "image/class/text" not in unlabelled.features.feature
