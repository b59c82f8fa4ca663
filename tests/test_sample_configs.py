"""Every config in sample_configs/ validates, and runs end to end on a few real photos."""
import glob
import os

import pytest
from click.testing import CliRunner

from cli import main
from pipeline import config, run
from tests.conftest import ROOT, SAMPLE_CONFIGS, assert_accounted, read_outputs

CONFIGS = sorted(glob.glob(os.path.join(SAMPLE_CONFIGS, "*.yaml")))
NAMES = [os.path.basename(p) for p in CONFIGS]
NEEDS_PYTHON_OPS = {"python_ops.yaml"}


def test_the_promised_configs_exist():
    assert {"light_classification.yaml", "heavy_classification.yaml", "idg_migration.yaml",
            "keras_layers.yaml", "mixed_chain.yaml", "python_ops.yaml"} <= set(NAMES)


@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_sample_config_validates(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # paths in the configs are relative to the repository root
    name = os.path.basename(path)
    args = ["validate", os.path.relpath(path, ROOT)]
    if name in NEEDS_PYTHON_OPS:
        refused = CliRunner().invoke(main, args)
        assert refused.exit_code == 2 and "--allow-python-ops" in refused.output
        args.append("--allow-python-ops")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    job = config.load(path, allow_python_ops=name in NEEDS_PYTHON_OPS)
    assert all(os.path.exists(p) for p in job.input), job.input
    assert job.chain and job.copies >= 1


@pytest.mark.parametrize("path", CONFIGS, ids=NAMES)
def test_sample_config_runs_end_to_end(path, small_folder, tmp_path):
    out = str(tmp_path / "out")
    job = config.load(path, overrides={"input": (small_folder,), "output": out, "copies": 1},
                      allow_python_ops=os.path.basename(path) in NEEDS_PYTHON_OPS)
    manifest = run.run_expand(job)
    assert_accounted(manifest)
    counts = manifest["counts"]
    assert counts["discovered"] == 9 and counts["written"] == 9 and counts["errored"] == 0
    rows = read_outputs(out)
    per_input = 1 + int(job.keep_original)
    assert len(rows) == counts["outputs"] == 9 * per_input
    assert {(r["source_id"], r["copy_index"]) for r in rows} == {
        (key, copy) for key in {r["source_id"] for r in rows}
        for copy in range(0 if job.keep_original else 1, 2)}
    for row in rows:
        assert row["image"].ndim == 3 and row["image"].shape[2] == 3
