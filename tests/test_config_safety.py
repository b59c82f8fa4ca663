"""Configs are data: YAML tags that build Python objects are refused, unknown keys are errors
naming where they are with a suggestion, and Python named in a config is not even imported
without --allow-python-ops. All through the command line: exit code 2, one message, no
traceback."""
import pytest
from click.testing import CliRunner

from cli import main

TRAP = "import pathlib\npathlib.Path({marker!r}).write_text('imported')\n\n" \
       "def identity(image, rng):\n    return image\n"


def invoke(*args):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch {marker}']",
                                 "!!python/name:os.system", "!!python/object:pathlib.Path {{}}"])
def test_python_yaml_tags_are_refused_and_never_run(tmp_path, tag):
    marker = tmp_path / "ran"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"augment:\n  seed: {tag.format(marker=marker)}\n")
    for command in (["validate", str(cfg)],
                    ["expand", "-c", str(cfg), "-i", "sample_data/images", "-o",
                     str(tmp_path / "out")]):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert f"error: {cfg}: YAML tag" in result.stderr
        assert "is not allowed: configs are data, not code" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message, hint", [
    ("augment:\n  copise: 3\n", "error: augment.copise: unknown key (did you mean 'copies'?)",
     "hint: keys of augment: balance, chain, copies, keep_original, plain_copies, seed"),
    ("augmnet:\n  copies: 3\n", "error: augmnet: unknown key (did you mean 'augment'?)",
     "hint: top-level keys: "),
    ("errors:\n  max_erors: 3\n",
     "error: errors.max_erors: unknown key (did you mean 'max_errors'?)",
     "hint: keys of errors: max_error_rate, max_errors"),
    ("errors:\n  max_error_rate: 2\n",
     "error: errors.max_error_rate: expected a number between 0 and 1, got 2", None),
    ("errors:\n  max_errors: -1\n", "error: errors.max_errors: must be >= 0, got -1", None),
    ("augment:\n  chain:\n    - {op: tf.image.random_brightness, max_delt: 0.2}\n",
     "error: augment.chain[0].max_delt: unknown parameter of tf.image.random_brightness "
     "(did you mean 'max_delta'?)", None),
    ("output:\n  prefix: ../../evil\n",
     "error: output.prefix: a file name prefix cannot contain '/' or start with '.'", None),
])
def test_unknown_and_invalid_keys_name_their_config_path(tmp_path, text, message, hint):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(text)
    result = invoke("validate", str(cfg))
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    if hint:
        assert hint in result.stderr, result.stderr


def test_python_ops_are_not_even_imported_without_the_flag(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "trap_ops.py").write_text(TRAP.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "job.yaml"
    cfg.write_text("augment:\n  chain:\n    - {op: python, function: 'trap_ops:identity'}\n")

    result = invoke("validate", str(cfg))
    assert result.exit_code == 2
    assert ("error: augment.chain[0].op: python runs Python code named in the config; it runs "
            "only when you pass --allow-python-ops") in result.stderr
    result = invoke("expand", "-c", str(cfg), "-i", "sample_data/images", "-o",
                    str(tmp_path / "out"))
    assert result.exit_code == 2 and "--allow-python-ops" in result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()

    result = invoke("validate", str(cfg), "--allow-python-ops")
    assert result.exit_code == 0, result.output
    assert marker.read_text() == "imported"  # with the flag, the module is loaded
