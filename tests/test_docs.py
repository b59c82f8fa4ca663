"""The docs stay true: the op reference matches the registry; README's snippets run."""
from pipeline import opsdoc
from pipeline.ops import registry


def test_op_reference_matches_the_registry():
    assert opsdoc.stale() == [], "run: python -m pipeline.opsdoc"


def test_every_op_is_in_the_reference():
    text = "\n".join(opsdoc.render().values())
    missing = [name for name in registry.all_ops() if f"### `{name}`" not in text]
    assert missing == []


# --- README --------------------------------------------------------------------------------------

import os  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline import config  # noqa: E402
from tests.conftest import ROOT, run_job  # noqa: E402

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def snippet(name):
    """The code block right after `<!-- snippet: NAME ... -->` in README.md."""
    match = re.search(r"<!-- snippet: " + re.escape(name) + r"\b.*?-->\s*```\w*\n(.*?)```",
                      README, re.S)
    assert match, f"README has no snippet {name}"
    return match.group(1)


def test_readme_config_example_is_valid(tmp_path):
    block = re.search(r"## Config\s+```yaml\n(.*?)```", README, re.S).group(1)
    path = tmp_path / "readme.yaml"
    path.write_text(block)
    job = config.load(str(path), require_paths=False)
    assert len(job.chain) == 5 and job.copies == 4
    assert yaml.safe_load(block)["augment"]["seed"] == 42


def test_readme_reading_snippet_reads_our_output(small_folder, tmp_path, monkeypatch):
    run_job(small_folder, tmp_path / "out" / "sample", [{"op": "tf.image.random_flip_left_right"}],
            copies=1, num_shards=2)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(snippet("read-output"), scope)
    images, labels = next(iter(scope["dataset"]))
    assert images.shape == (18, 128, 128, 3)  # 9 inputs x (original + 1 copy), one batch
    assert sorted(set(labels.numpy())) == [0, 1, 2]


def test_readme_keras_layer_snippet_builds_a_working_model(monkeypatch):
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(snippet("keras-layer"), scope)
    model = scope["model"]
    batch = np.random.default_rng(0).uniform(0, 255, (2, 128, 128, 3)).astype("float32")
    assert model(batch, training=True).shape == (2, 3)
    assert np.isfinite(model(batch, training=False).numpy()).all()
