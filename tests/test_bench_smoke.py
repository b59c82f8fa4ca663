"""The benchmark runs end to end on a tiny dataset and reports its rows. Speeds are measured,
never asserted: only that each row produced its outputs and numbers.

The run covers every kind of row (each variant, input kind, runner and data set); the rows that
differ from one of those only in a runtime setting (XLA, the resample kernel, recording ops,
Beam's running mode) have their arguments checked, not run: each costs a process that imports
TensorFlow, and the suite's time is bounded."""
import json
import os
import subprocess
import sys

from PIL import Image

from bench import run as bench_run
from bench import variants
from pipeline import config
from tests.conftest import ROOT

RUN = ["F0", "B1", "B2", "augbatch", "augbatch --xla tfrecord", "augbatch --xla threads x2",
       "augbatch dask x2", "B1 colour", "augbatch colour", "augbatch uint8 colour",
       "augbatch 512", "augbatch detection"]
PEER = ["P0", "P1", "P1 colour", "P1 tf arithmetic", "P1 colour tf arithmetic", "P1 512",
        "P1 detection"]


def test_bench_reports_its_rows(tmp_path):
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--inputs", "8", "--repeats", "1", "--copies", "1",
         "--rss-inputs", "8", "--no-warmup", "--jobs", "3", "--out", str(out),
         "--only", *RUN, *PEER],
        cwd=ROOT, capture_output=True, text=True, timeout=900,  # a hang guard: busy CI is slow
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    # The peer's rows (albumentations) run where it is installed, else a note says why not.
    peer = PEER if "P1" in report["vs_peer"] else []
    assert peer or (f"note: rows {', '.join(PEER)} (albumentations) skipped") in done.stdout

    rows = {r["row"]: r for r in report["results"]}
    assert sorted(rows) == sorted(RUN + peer)
    if peer:  # augbatch against albumentations doing the same arithmetic, printed
        assert sorted(report["vs_peer_same_arithmetic"]) == ["augbatch", "augbatch colour"]
        assert "augbatch colour vs P1 colour tf arithmetic (albumentations doing" in done.stdout
    for name, row in rows.items():
        # 8 inputs x 1 copy, every contender; the 512x512 rows run a quarter of the inputs
        assert row["outputs"] == (2 if name.endswith(" 512") else 8), row
        assert row["img_per_s"] > 0 and row["img_per_cpu_s"] > 0 and row["peak_rss_mb"] > 0
        assert 0 < row["main_thread_share"] <= 1.01, row  # (CPU clocks tick coarsely)
        assert len(row["runs"]) == 1
    with_sizes = {Image.open(path).size for path in (out / "data-512-2").rglob("*.jpg")}
    assert with_sizes == {(512, 512)}, with_sizes
    # The detection rows wrote OD API records, every one with its box lists, read back; the
    # inputs hold 1 to 4 boxes each, of which a rotation of up to 20 degrees keeps most.
    for name in ["augbatch detection"] + [p for p in peer if p.endswith("detection")]:
        written = rows[name]["runs"][0]["written"]
        assert written["records"] == written["records_with_boxes"] == 8, (name, written)
        assert written["boxes"] >= 8, (name, written)
        assert f"{name}: 8 records, 8 with boxes, {written['boxes']} boxes" in done.stdout
    assert report["startup_s"] > 0
    assert report["rss_scaling"]["inputs"] == [8, 64]
    assert all(mb > 0 for mb in report["rss_scaling"]["peak_rss_mb"])
    # The printed table has a line per row, with its ratios to B1 and F0.
    table = done.stdout.splitlines()
    for name in rows:
        assert any(line.startswith(name + " ") for line in table), name


def test_every_other_row_has_arguments_its_variant_takes(tmp_path):
    every = bench_run.rows("folder", "records/*.tfrecord", "large", "boxes/*.tfrecord")
    others = [(name, args) for name, _, args in every if name not in RUN + PEER]
    assert sorted(name for name, _ in others) == sorted([
        "augbatch --xla", "augbatch record_ops off", "augbatch --kernel tensorflow",
        "augbatch --xla multi_processing x2", "augbatch --xla colour", "augbatch uint8"])
    for name, args in others:
        parsed = variants.arguments().parse_args(
            bench_run.variant_argv(args, str(tmp_path / "out"), 4, None))
        assert parsed.variant == "augbatch", name
        runtime = json.loads(parsed.runtime)
        job = config.load(None, overrides={"input": (parsed.inputs,), "output": parsed.out,
                                           "chain": variants.CHAINS[parsed.chain], **runtime})
        assert job.chain and all(getattr(job, k) == v for k, v in runtime.items()), name
        assert job.xla == ("--xla" in name), name
        # (the uint8 rows: albumentations' arithmetic for brightness and contrast)
        assert any(step.get("op", "").startswith("uint8.") for step in job.chain) == (
            "uint8" in name), name
        beam_args = json.loads(parsed.beam_args)
        assert beam_args == (bench_run.MULTI_PROCESSING if "multi_processing" in name
                             else []), name


def test_each_augbatch_row_runs_beside_its_peer_and_is_compared_round_by_round():
    every = bench_run.rows("folder", "records/*.tfrecord", "large", "boxes/*.tfrecord")
    chosen = [row for row in every if row[0] in ("F0", "P1", "augbatch", "P1 colour",
                                                  "augbatch colour", "augbatch uint8 colour",
                                                  "P1 512", "augbatch 512")]
    rounds = [[name for name, _, _ in order] for order in bench_run.schedule(chosen, 4)]
    assert rounds[0] == ["F0", "augbatch", "P1", "augbatch colour", "augbatch uint8 colour",
                         "P1 colour", "augbatch 512", "P1 512"]
    # rotated a group at a time, each group's order reversed every other round
    assert rounds[1] == ["P1", "augbatch", "P1 colour", "augbatch uint8 colour",
                         "augbatch colour", "P1 512", "augbatch 512", "F0"]
    assert rounds[2][:3] == ["augbatch colour", "augbatch uint8 colour", "P1 colour"]
    for order in rounds:
        assert sorted(order) == sorted(name for name, _, _ in chosen)
        for name in order:  # beside its peer (the colour group has two augbatch rows)
            if name.startswith("augbatch"):
                assert abs(order.index(name) - order.index(bench_run.peer_of(name))) <= 2

    def run(outputs, wall_s, cpu_s):
        return {"outputs": outputs, "wall_s": wall_s, "cpu_s": cpu_s}
    # Round 2 ran on a slow machine for both: its ratio is the same as the others'.
    row = [run(400, 1.0, 2.0), run(400, 2.0, 4.0), run(400, 1.25, 2.5)]
    peer = [run(400, 1.1, 2.4), run(400, 2.2, 4.8), run(400, 1.0, 3.0)]
    ratios = bench_run.paired_ratios(row, peer)
    assert [round(x, 6) for x in ratios["wall_rounds"]] == [1.1, 1.1, 0.8]
    assert [round(x, 6) for x in ratios["cpu_rounds"]] == [1.2, 1.2, 1.2]
    assert round(ratios["wall"], 6) == 1.1 and round(ratios["cpu"], 6) == 1.2
