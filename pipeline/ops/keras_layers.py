"""keras.layers: the installed Keras' image preprocessing layers, by class name.

`keras.layers.RandomRotation` with `factor: 0.1` builds `RandomRotation(factor=0.1)` and runs it
as in training (`training=True`). The layers are discovered from the installed Keras (tf.keras:
Keras 2 with TensorFlow 2.15, Keras 3 on newer stacks, where RandAugment, AugMix, RandomShear,
... appear the same way). Parameters are the layer constructor's own, checked against its
signature, and the layer is constructed at validation so Keras' own argument checks run then.

Pixel values: Keras' image layers assume [0, 255] by default (RandomContrast clips there,
RandomBrightness' `value_range` is (0, 255)). The op scales our [0, 1] images to [0, 255] for
the layer and back afterwards, so `value_range`, where a layer has it, must stay [0, 255].

Seeding: a Keras layer given a batch draws from one generator for the whole batch (and its
stateless path draws one value for a 4-D batch), so an image's output would depend on the batch.
Instead each example runs through the layer alone (a batch of one) with the layer's random
generator replaced by one bound to the example's seed: the layer's first draw in a call uses the
example's seed itself, its k-th draw (k >= 1) `stateless_fold_in(seed, k)`. For a layer that
draws once per call this is exactly Keras' own stateless mode (`rng_type="stateless"`) given
that seed. The layer's own `seed` argument is not accepted: draws come from `augment.seed`.
"""
import dataclasses
import functools
import inspect

import keras
import tensorflow as tf

from pipeline.errors import ConfigError
from pipeline.ops import draw
from pipeline.ops.registry import UNCHANGED, Op, Param, add, unavailable

F = "keras.layers"

# Constructor arguments the op sets itself or that make no sense in a config.
NOT_CONFIGURABLE = {
    "seed": "draws come from augment.seed, one stateless seed per example",
    "name": "the op names its layer",
    "dtype": "the op runs layers in float32",
    "data_format": "images are channels-last",
    "bounding_box_format": "the op transforms images only",
}

# Layers not offered as ops, and why.
EXCLUDED = {
    "MixUp": "mixes images across the batch", "CutMix": "mixes images across the batch",
    "RandomHeight": "draws an output height per image, which one batch cannot hold",
    "RandomWidth": "draws an output width per image, which one batch cannot hold",
    "RandomApply": "takes a layer object (use `probability:` on a step)",
    "RandomChoice": "takes layer objects (use `one_of:`)",
    "Pipeline": "takes layer objects (list the steps in the chain)",
    "MaxNumBoundingBoxes": "works on bounding boxes only",
}

# Image layers Keras 3 added (TensorFlow 2.16+); on Keras 2 a config naming one is told so.
KERAS_3_LAYERS = (
    "AugMix", "AutoContrast", "ContrastLimitedAdaptiveHistogramEqualization", "Equalization",
    "RandAugment", "RandomColorDegeneration", "RandomColorJitter", "RandomElasticTransform",
    "RandomErasing", "RandomGaussianBlur", "RandomGrayscale", "RandomHue", "RandomInvert",
    "RandomPerspective", "RandomPosterization", "RandomSaturation", "RandomSharpness",
    "RandomShear", "Solarization")

# Values of string parameters that some Keras versions do not check (Keras 3's RandomFlip takes
# any `mode`, then flips nothing).
CHOICES = {("RandomFlip", "mode"): ("horizontal", "vertical", "horizontal_and_vertical")}

# Layers whose output size differs from their input's.
CHANGES_SIZE = {"RandomCrop", "CenterCrop", "Resizing", "RandomResizedCrop"}

# Parameters for the registry-driven tests, for layers with required arguments (or defaults that
# change nothing). A discovered layer with required arguments and no entry here fails those
# tests, on purpose.
TEST_PARAMS = {
    "RandomRotation": {"factor": 0.1},
    "RandomZoom": {"height_factor": 0.2},
    "RandomTranslation": {"height_factor": 0.1, "width_factor": 0.1},
    "RandomContrast": {"factor": 0.3},
    "RandomBrightness": {"factor": 0.2},
    "RandomCrop": {"height": 24, "width": 32},
    "CenterCrop": {"height": 24, "width": 32},
    "Resizing": {"height": 40, "width": 30},
    "Rescaling": {"scale": 0.9},
    "RandomShear": {"x_factor": 0.2, "y_factor": 0.2},
    "RandomResizedCrop": {"height": 24, "width": 32},
    "RandomHue": {"factor": 0.2},
    "RandomSaturation": {"factor": 0.5},
    "RandomSharpness": {"factor": 0.5},
    "RandomColorDegeneration": {"factor": 0.5},
    "RandomPosterization": {"factor": 4},
    "RandomColorJitter": {"brightness_factor": 0.2, "contrast_factor": 0.3, "hue_factor": 0.1},
    "Solarization": {"addition_factor": 0.2, "threshold_factor": 0.5},
}

# Layers that only change pixel values (or occlude): an input's boxes, masks and keypoints pass
# through them unchanged. Every other layer moves pixels in ways augbatch does not follow, so it
# is refused for inputs with targets (the tf.image / tfa.image equivalents carry them).
PIXELS_ONLY = {"RandomBrightness", "RandomContrast", "Rescaling", "RandomHue", "RandomSaturation",
               "RandomSharpness", "RandomColorDegeneration", "RandomPosterization",
               "RandomColorJitter", "Solarization", "AutoContrast", "Equalization",
               "RandomGrayscale", "RandomInvert", "RandomGaussianBlur", "RandomErasing"}

# Module names of image layers on Keras 3 releases before the image_preprocessing package.
_IMAGE_MODULES = {"center_crop", "rescaling", "resizing"}


def _is_image_layer(cls):
    module = cls.__module__
    if ".preprocessing" not in module:
        return False
    last = module.rsplit(".", 1)[-1]
    return ("image_preprocessing" in module or last.startswith("random_")
            or last in _IMAGE_MODULES)


def discover():
    """{class name: class} of the installed Keras' image preprocessing layers."""
    layers = tf.keras.layers
    found = {}
    for name in dir(layers):
        cls = getattr(layers, name)
        if (isinstance(cls, type) and issubclass(cls, layers.Layer) and name not in EXCLUDED
                and _is_image_layer(cls)):
            found[name] = cls
    return found


def _params(cls):
    """Params from the constructor's signature (kinds from the defaults' types)."""
    params = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.name in NOT_CONFIGURABLE or p.kind in (
                p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = p.default
        if default is inspect.Parameter.empty:
            params.append(Param(p.name, "any"))
            continue
        if isinstance(default, tuple):
            default = list(default)  # as YAML would give it
        kind = ("bool" if isinstance(default, bool) else "str" if isinstance(default, str)
                else "float" if isinstance(default, float) else "any")
        params.append(Param(p.name, kind, default,
                            choices=CHOICES.get((cls.__name__, p.name))))
    return params


@dataclasses.dataclass(frozen=True)
class LayerOp(Op):
    """A Keras layer op: validated against the layer's signature and its own constructor."""
    layer_class: type = None

    def resolve(self, given, path):
        for key in given:
            if key in NOT_CONFIGURABLE:
                raise ConfigError(f"{path}.{key}", f"not accepted by {self.name}: "
                                  f"{NOT_CONFIGURABLE[key]}")
        resolved = super().resolve(given, path)
        value_range = resolved.get("value_range")
        if value_range is not None and sorted(value_range) != [0, 255]:
            raise ConfigError(f"{path}.value_range", "Keras layers see pixel values in "
                              f"[0, 255] here (the op scales images for them), got {value_range}")
        try:
            self.layer_class(**resolved)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise ConfigError(path, f"{self.name} refused these arguments: {e}",
                              hint=self.signature()) from None
        return resolved


class _ExampleSeeds:
    """The stateless seeds of one example's call through a layer: the example's seed for the
    first draw, stateless_fold_in(seed, k) for the k-th."""

    def __init__(self):
        self.seed, self.count = None, 0

    def start(self, seed):
        self.seed, self.count = seed, 0

    def next(self):
        seed = self.seed if self.count == 0 else tf.random.experimental.stateless_fold_in(
            self.seed, self.count)
        self.count += 1
        return seed


class _Keras2Generator:
    """Stands in for a Keras 2 layer's backend.RandomGenerator: every draw is stateless."""

    def __init__(self, seeds):
        self.seeds = seeds

    def _maybe_init(self):
        pass

    def make_seed_for_stateless_op(self):
        return self.seeds.next()

    def random_uniform(self, shape, minval=0.0, maxval=None, dtype=None, nonce=None):
        return tf.random.stateless_uniform(shape, self.seeds.next(), minval, maxval,
                                           dtype or tf.float32)

    def random_normal(self, shape, mean=0.0, stddev=1.0, dtype=None, nonce=None):
        return tf.random.stateless_normal(shape, self.seeds.next(), mean, stddev,
                                          dtype or tf.float32)

    def truncated_normal(self, shape, mean=0.0, stddev=1.0, dtype=None, nonce=None):
        return tf.random.stateless_truncated_normal(shape, self.seeds.next(), mean, stddev,
                                                    dtype or tf.float32)


def _keras3_generator(seeds):
    """A Keras 3 SeedGenerator whose next() is the example's next seed (no state variable)."""
    from keras.src.random.seed_generator import SeedGenerator

    class ExampleSeedGenerator(SeedGenerator):
        def __init__(self):  # no super().__init__: nothing stateful to create
            self.seed = None

        def next(self, ordered=True):
            return seeds.next()
    return ExampleSeedGenerator()


def bind_seeds(layer):
    """Route every random draw of `layer` (and its sublayers) through per-example seeds.

    Returns the `_ExampleSeeds` to `start(seed)` before each call."""
    seeds = _ExampleSeeds()
    if hasattr(layer, "_random_generator"):  # Keras 2: backend.RandomGenerator
        object.__setattr__(layer, "_random_generator", _Keras2Generator(seeds))
        return seeds
    try:  # Keras 3: layers draw through SeedGenerator attributes and _get_seed_generator().
        from keras.src.random.seed_generator import SeedGenerator
    except ImportError:  # Keras 2, a layer that draws nothing
        return seeds
    generator = _keras3_generator(seeds)
    for sub in list(getattr(layer, "_flatten_layers", lambda: [layer])()):
        for attr, value in list(vars(sub).items()):
            if isinstance(value, SeedGenerator):
                object.__setattr__(sub, attr, generator)
        if hasattr(sub, "_get_seed_generator"):
            object.__setattr__(sub, "_get_seed_generator", lambda backend=None: generator)
    return seeds


def build_layer_op(cls, **params):
    """The op fn running a `cls(**params)` layer as in training, on [0, 255] pixel values.

    Every example runs alone, deterministic layers too: some compute over the whole batch."""
    layer = cls(**params)
    example_seeds = bind_seeds(layer)

    def one(image, seed):
        example_seeds.start(seed)
        return tf.cast(layer(image[None] * 255.0, training=True)[0], tf.float32) / 255.0
    return _sized_if_needed(lambda images, seeds: draw.per_example(one, images, seeds))


def _trace_without_sizes(run, channels):
    """`run` traced for images of unknown height and width, or None if it cannot be."""
    try:
        return tf.function(run).get_concrete_function(
            tf.TensorSpec([None, None, None, channels]), tf.TensorSpec([None, 2], tf.int32))
    except (TypeError, ValueError):  # e.g. Keras 3's RandomPerspective: `width - 1` on None
        return None


def _sized_if_needed(run):
    """`run`, or, for a layer that needs to know the image size, `run` traced once per image
    size and called through tf.py_function.

    The chain is traced for images of any size, and some Keras 3 layers (RandomPerspective,
    RandomErasing, RandomElasticTransform, RandomCrop, ContrastLimitedAdaptiveHistogramEqualization)
    compute with the size as Python numbers, so they cannot be traced that way."""
    by_size, sizeless = {}, {}

    def run_sized(images, seeds):  # runs eagerly: the size is known here
        size = tuple(images.shape[1:])
        if size not in by_size:
            by_size[size] = tf.function(run).get_concrete_function(
                tf.TensorSpec([None, *size]), tf.TensorSpec([None, 2], tf.int32))
        return by_size[size](images, seeds)

    def fn(images, seeds):
        if images.shape[1:3].is_fully_defined():
            return run(images, seeds)
        channels = images.shape[-1]
        if channels not in sizeless:
            sizeless[channels] = _trace_without_sizes(run, channels)
        if sizeless[channels] is not None:
            return sizeless[channels](images, seeds)
        out = tf.py_function(run_sized, [images, seeds], tf.float32)
        return tf.ensure_shape(out, [None, None, None, channels])
    return fn


def _doc(cls):
    first = (cls.__doc__ or "").strip().split("\n")[0]
    return f"Keras {cls.__name__}{': ' + first if first else ''} (images seen in [0, 255])"


def register_discovered():
    for name, cls in sorted(discover().items()):
        params = _params(cls)
        random = "seed" in inspect.signature(cls.__init__).parameters
        required = [p.name for p in params if p.required]
        test_params = TEST_PARAMS.get(name, None if required else {})
        add(LayerOp(name=f"keras.layers.{name}", family=F, layer_class=cls,
                    builder=functools.partial(build_layer_op, cls),
                    params=tuple(params), random=random, doc=_doc(cls),
                    keeps_shape=name not in CHANGES_SIZE, test_params=test_params,
                    targets=UNCHANGED if name in PIXELS_ONLY else None))
    for name in KERAS_3_LAYERS:
        if not hasattr(tf.keras.layers, name):
            unavailable(f"keras.layers.{name}", "needs Keras 3 (the modern stack: Python 3.12, "
                        f"TensorFlow 2.16+); this stack has Keras {keras.__version__}")


register_discovered()
