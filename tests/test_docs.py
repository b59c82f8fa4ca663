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

import glob  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
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


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_readme_reading_snippet_reads_our_output(small_folder, tmp_path, monkeypatch, compression):
    run_job(small_folder, tmp_path / "out" / "sample", [{"op": "tf.image.random_flip_left_right"}],
            copies=1, num_shards=2, compression=compression)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(snippet("read-output"), scope)
    images, labels = next(iter(scope["dataset"]))
    assert images.shape == (18, 128, 128, 3)  # 9 inputs x (original + 1 copy), one batch
    assert sorted(set(labels.numpy())) == [0, 1, 2]


def test_readme_tfds_snippet_reads_a_tfds_output(small_folder, tmp_path, monkeypatch):
    run_job(small_folder, tmp_path / "out" / "sample", [{"op": "tf.image.random_flip_left_right"}],
            copies=1, num_shards=2, tfds=True)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(snippet("read-tfds"), scope)
    assert scope["builder"].info.splits["train"].num_examples == 18
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


def shell_lines(text):
    """The commands of the ```bash blocks in `text`, comments dropped, each split into words."""
    blocks = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
    return [shlex.split(line, comments=True) for block in blocks
            for line in block.splitlines() if shlex.split(line, comments=True)]


def test_readme_quickstart_steps_are_the_scripts():
    quickstart = README[README.index("## Quickstart"):README.index("## Look, write, check")]
    lines = shell_lines(quickstart)
    # The script, then activation (the bare `augbatch` commands below need it), then the
    # command the script runs, word for word (with --overwrite: the script filled out/sample).
    assert lines[:2] == [["bash", "scripts/quickstart.sh"], ["source", ".venv/bin/activate"]]
    script = open(os.path.join(ROOT, "scripts", "quickstart.sh"), encoding="utf-8").read()
    ran = next(shlex.split(line) for line in script.splitlines() if "/augbatch\" expand " in line)
    ran = [{"$VENV/bin/augbatch": "augbatch", "$OUT": "out/sample"}.get(w, w) for w in ran]
    assert ran in lines and "--overwrite" in ran
    for words in shell_lines(README):  # every script the README names exists
        assert not words[-1].startswith("scripts/") or os.path.exists(os.path.join(ROOT, words[-1]))


def test_venv_script_finds_a_pyenv_python_that_is_not_on_the_path(tmp_path):
    """The README's setup steps go through scripts/venv.sh, which finds python3.12 under pyenv
    when it is not the global version (its shim then fails) nor on the PATH."""
    installed = tmp_path / "pyenv" / "versions" / "3.12.1" / "bin"
    installed.mkdir(parents=True)
    (installed / "python3.12").symlink_to(sys.executable)
    env = {"PATH": "/usr/bin:/bin", "PYENV_ROOT": str(tmp_path / "pyenv"), "STACK": "modern"}
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "venv.sh"), "--which-python"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(installed / "python3.12")
    assert "STACK=modern EXTRAS=dev,dask bash scripts/venv.sh" in README


def test_the_python_ops_users_copy_are_examples_not_tests():
    configs = [open(p, encoding="utf-8").read()
               for p in sorted(glob.glob(os.path.join(ROOT, "sample_configs", "*.yaml")))]
    named = re.findall(r"function:\s*([\w.]+):", "\n".join(configs + [README]))
    assert "examples.augment_ops" in named
    assert all(not module.startswith("tests") for module in named), named
