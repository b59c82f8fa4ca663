"""The TensorFlow side of a worker: the traced chain + encoder, built once per worker."""
import logging

import numpy as np
import tensorflow as tf

from pipeline import chain as chain_mod

log = logging.getLogger("augbatch")


def configure_threads(tf_threads):
    """Cap TensorFlow's thread pools (so several workers do not oversubscribe the cores).
    Only possible before TensorFlow's runtime starts; later calls keep what is set."""
    if not tf_threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(tf_threads)
    except RuntimeError:
        log.debug("TensorFlow already started; thread settings unchanged")


def _encode_one(image, as_png, quality):
    return tf.cond(as_png, lambda: tf.io.encode_png(image),
                   lambda: tf.io.encode_jpeg(image, quality=quality))


def _encode_batch(images, as_png, quality):
    return tf.map_fn(lambda pair: _encode_one(pair[0], pair[1], quality), (images, as_png),
                     fn_output_signature=tf.TensorSpec([], tf.string))


def to_float(images):
    return tf.image.convert_image_dtype(images, tf.float32)


def to_uint8(images):
    return tf.image.convert_image_dtype(tf.clip_by_value(images, 0.0, 1.0), tf.uint8,
                                        saturate=True)


class ChainRunner:
    """Runs a job's chain on uint8 batches with per-example seeds, and encodes the result."""

    def __init__(self, job):
        configure_threads(job.tf_threads)
        self.quality = job.quality
        chain = chain_mod.build(job.chain)
        channels = job.channels
        images_spec = tf.TensorSpec([None, None, None, channels], tf.uint8)

        @tf.function(input_signature=[images_spec, tf.TensorSpec([None, 2], tf.int32)])
        def augment(images, seeds):
            return to_uint8(chain(to_float(images), seeds))

        @tf.function(input_signature=[images_spec, tf.TensorSpec([None], tf.bool)])
        def encode(images, as_png):
            return _encode_batch(images, as_png, self.quality)

        self._augment, self._encode = augment, encode

    def augment(self, images, seeds):
        """uint8 [B, H, W, C], int32 [B, 2] -> uint8 [B, H', W', C] (numpy)."""
        return self._augment(images, seeds).numpy()

    def encode(self, images, formats):
        as_png = np.array([f == "png" for f in formats])
        return [bytes(b) for b in self._encode(images, as_png).numpy()]

    def augment_encode(self, images, seeds, formats):
        """-> (encoded bytes per image, output image shape)."""
        out = self.augment(images, seeds)
        return self.encode(out, formats), out.shape[1:]
