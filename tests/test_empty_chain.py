"""An empty chain with copies > 0 would write identical copies: refused unless asked for."""
from click.testing import CliRunner

from cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_an_empty_chain_with_copies_is_refused_by_validate_and_expand(small_folder, tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("augment:\n  copies: 3\n")
    result = invoke("validate", cfg)
    assert result.exit_code == 2, result.output
    assert ("error: augment.chain: nothing would change: 3 identical copies of each input"
            in result.stderr)
    assert "augment.plain_copies: true" in result.stderr and "Traceback" not in result.output
    # No config at all: the default 4 copies, refused before anything is written.
    result = invoke("expand", "-i", small_folder, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "nothing would change: 4 identical copies" in result.stderr
    assert not (tmp_path / "out").exists()


def test_plain_copies_asked_for_or_no_copies_are_valid(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("augment:\n  copies: 2\n  plain_copies: true\n")
    result = invoke("validate", cfg)
    assert result.exit_code == 0 and ": valid (0 ops" in result.stdout, result.output
    cfg.write_text("augment:\n  copies: 0\n")
    assert invoke("validate", cfg).exit_code == 0
    cfg.write_text("augment:\n  plain_copies: yes please\n")
    result = invoke("validate", cfg)
    assert result.exit_code == 2 and "augment.plain_copies: expected true or false" in result.stderr
