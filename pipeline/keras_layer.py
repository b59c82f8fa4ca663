"""Training-time augmentation: an augbatch chain as a Keras layer inside a model.

    from pipeline.keras_layer import augmentation_layer

    model = tf.keras.Sequential([
        tf.keras.Input((224, 224, 3)),
        augmentation_layer("sample_configs/light_classification.yaml", seed=7),
        tf.keras.layers.Rescaling(1 / 255),
        ...
    ])

The chain is the one `augbatch expand` runs offline, with the same ops and the same per-example
randomness: in training (training=True) every image gets its own stateless seed, drawn from a
stateful tf.random.Generator seeded by `seed`, so each step sees new augmentations and a given
`seed` repeats the same sequence. In inference (training=False) images pass through unchanged.

Images come in and go out in `value_range` (default [0, 255], as for Keras' own image layers),
as float32; the chain itself works on [0, 1] and its output is clipped there, as offline.
"""
import os

import tensorflow as tf

from pipeline import chain as chain_mod
from pipeline import config
from pipeline.errors import ConfigError


def _steps(chain_config_or_path, allow_python_ops):
    """The chain from a config file path, a config dict or a list of steps, as config steps."""
    source = chain_config_or_path
    if isinstance(source, (str, os.PathLike)):
        job = config.load(os.fspath(source), allow_python_ops=allow_python_ops,
                          require_paths=False)
        return [_config_step(step) for step in job.chain]
    if isinstance(source, dict):
        augment = source.get("augment", source)
        if not isinstance(augment, dict) or "chain" not in augment:
            raise ConfigError("augment.chain", "a config dict needs augment.chain (or chain)")
        return augment["chain"]
    return source


def _config_step(step):
    """A normalized step written back as a config writes it (so normalize reads it again)."""
    if "op" in step:
        return {"op": step["op"], **step["params"], "probability": step["probability"]}
    return {key: [_config_step(child) for child in value] if key in chain_mod.GROUPS else value
            for key, value in step.items()}


def _plain(value):
    """Plain dicts and lists: Keras 2 wraps a layer's attributes in proxies JSON cannot write."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# Registered, so a saved model holding the layer loads back without custom_objects.
@tf.keras.utils.register_keras_serializable(package="augbatch")
class ChainAugmentation(tf.keras.layers.Layer):
    """Applies a chain in training, per-example seeded; identity in inference.

    `steps` are config steps (as in augment.chain); get_config gives them back with every
    parameter resolved, so a saved model rebuilds the same chain with the same draws.
    """

    def __init__(self, steps, seed=None, value_range=(0.0, 255.0), allow_python_ops=False,
                 mask_fill=0, **kwargs):
        super().__init__(**kwargs)
        self.mask_fill = float(mask_fill)  # segmentation-mask value outside the moved frame
        self.steps = chain_mod.normalize(_plain(steps), allow_python_ops=allow_python_ops)
        for i, step in enumerate(self.steps):
            if not chain_mod.keeps_shape(step):
                raise ConfigError(f"augment.chain[{i}]", "changes the image size; an augmentation "
                                  "layer must keep it, so training and inference see one shape")
        self.allow_python_ops = bool(allow_python_ops)
        self.seed = seed
        self.value_range = tuple(float(v) for v in value_range)
        self._chain = chain_mod.build(self.steps)
        self._rng = (tf.random.Generator.from_seed(seed) if seed is not None
                     else tf.random.Generator.from_non_deterministic_state())

    def _augment(self, images, seeds=None):
        low, high = self.value_range
        unit = tf.clip_by_value((tf.cast(images, tf.float32) - low) / (high - low), 0.0, 1.0)
        if seeds is None:
            seeds = self._rng.uniform_full_int([tf.shape(images)[0], 2], dtype=tf.int32)
        out = tf.clip_by_value(self._chain(unit, seeds), 0.0, 1.0) * (high - low) + low
        out.set_shape(images.shape)
        return out

    def call(self, images, training=None):
        """images [B, H, W, C], or a dict as Keras 3's image layers take it: {"images",
        "bounding_boxes": {"boxes": [B, N, 4] normalised [ymin, xmin, ymax, xmax], "labels":
        [B, N]}, "segmentation_masks": [B, H, W, 1]}, whose targets follow the chain's moves."""
        if isinstance(images, dict):
            return self._call_with_targets(images, training)
        # Keras passes training=True in fit(); a plain call without it is inference.
        if training is None or isinstance(training, (bool, int)):
            return self._augment(images) if training else tf.cast(images, tf.float32)
        return tf.cond(tf.cast(training, tf.bool), lambda: self._augment(images),
                       lambda: tf.cast(images, tf.float32))

    def _call_with_targets(self, data, training):
        if not (training is None or isinstance(training, (bool, int))):
            raise ValueError("with targets, call the layer with training=True or False")
        if not training:
            return dict(data, images=tf.cast(data["images"], tf.float32))
        from pipeline import targets
        targets.check_chain(self.steps, {targets.BOXES} if "bounding_boxes" in data else
                            {targets.CLASS_MASK})
        images = data["images"]
        seeds = self._rng.uniform_full_int([tf.shape(images)[0], 2], dtype=tf.int32)
        out = dict(data, images=self._augment(images, seeds))
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        moves = chain_mod.build_geometry(self.steps)(seeds, height, width)
        if "bounding_boxes" in data:
            out["bounding_boxes"] = _moved_boxes(data["bounding_boxes"], moves, height, width)
        if "segmentation_masks" in data:
            masks = data["segmentation_masks"]
            for move in moves:  # nearest: never a blend of two classes
                masks = tf.raw_ops.ImageProjectiveTransformV3(
                    images=masks, transforms=move.transforms, output_shape=[height, width],
                    fill_value=tf.constant(self.mask_fill, tf.float32),
                    interpolation="NEAREST", fill_mode="CONSTANT")
            out["segmentation_masks"] = masks
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed, "value_range": list(self.value_range),
                "mask_fill": self.mask_fill,
                "allow_python_ops": self.allow_python_ops,
                "steps": [_config_step(step) for step in _plain(self.steps)]}


def _moved_boxes(boxes, moves, height, width):
    """Keras-style boxes after the moves: the enclosing box of the moved corners, clipped to
    the frame; a box left with no area keeps its slot with label -1 (as Keras 3 marks it)."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(boxes["boxes"], tf.float32) * [h, w, h, w], axis=-1)
    corners = tf.stack([tf.stack([x, y, tf.ones_like(x)], -1) for x, y in
                        ((xmin, ymin), (xmax, ymin), (xmin, ymax), (xmax, ymax))], -2)
    shift = tf.constant([[1.0, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])  # pixel centres at i + 0.5
    back = tf.constant([[1.0, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    from pipeline.ops import geometry
    for move in moves:
        matrix = back @ geometry.to_matrices(move.transforms) @ shift  # output -> input
        moved = tf.einsum("bij,bnkj->bnki", tf.linalg.inv(matrix), corners)
        xy = moved[..., :2] / moved[..., 2:]
        low = tf.clip_by_value(tf.reduce_min(xy, -2), 0.0, [w, h])
        high = tf.clip_by_value(tf.reduce_max(xy, -2), 0.0, [w, h])
        corners = tf.stack([tf.stack([x, y, tf.ones_like(x)], -1) for x, y in
                            ((low[..., 0], low[..., 1]), (high[..., 0], low[..., 1]),
                             (low[..., 0], high[..., 1]), (high[..., 0], high[..., 1]))], -2)
    out = tf.stack([corners[..., 0, 1] / h, corners[..., 0, 0] / w,
                    corners[..., 3, 1] / h, corners[..., 3, 0] / w], -1)
    gone = (out[..., 2] <= out[..., 0]) | (out[..., 3] <= out[..., 1])
    labels = tf.where(gone, tf.cast(-1, boxes["labels"].dtype), boxes["labels"])
    return dict(boxes, boxes=tf.cast(out, boxes["boxes"].dtype), labels=labels)


def augmentation_layer(chain_config_or_path, seed=None, value_range=(0, 255),
                       allow_python_ops=False, name="augbatch_augmentation"):
    """A Keras layer applying the chain of a config (path or dict) or a list of steps.

    The chain must keep the image size, so training and inference see the same shape.
    `python` ops need allow_python_ops=True, as on the command line; the saved layer keeps that
    permission, so loading a model that holds it imports the functions it names.
    A model holding the layer saves and loads back like any Keras model (`model.save`,
    `tf.keras.models.load_model`, no custom_objects), once `pipeline.keras_layer` is imported.
    """
    return ChainAugmentation(_steps(chain_config_or_path, allow_python_ops), seed=seed,
                             value_range=value_range, allow_python_ops=allow_python_ops,
                             name=name)
