"""Run the benchmark: augbatch against hand-written tf.data, Keras ImageDataGenerator,
albumentations in a process pool (the peer a CPU user would pick) and the decode + re-encode
floors, on one realistic dataset, in one invocation.

    python -m bench                        # 2,000 inputs (256 and 512 px), 3 interleaved runs
    python -m bench --inputs 40 --repeats 1 --rss-inputs 40   # a quick look
    python -m bench --peer-python /path/to/venv/bin/python   # albumentations installed there

Besides the standard and colour-only chains on that data set, two pairs of rows on data of their
own: "augbatch 512" / "P1 512" (the standard chain on 512x512 images, a quarter of --inputs) and
"augbatch detection" / "P1 detection" (the standard chain on the same images as OD API
TFRecords with 1-4 boxes each, boxes carried; the boxes written are read back and counted).

Each row runs in its own process (`bench.variants`), warmed up first; rows are interleaved and
each reports the median of its runs. Each augbatch row runs beside the peer row it is compared
with, so its ratio to the peer is also given round by round (`schedule`, `paired_ratios`).
Speeds are output images per second of wall time and per CPU-second (all the process's threads
and children). The table is printed and written as JSON.
"""
import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from bench import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_PROCESSING = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
MULTI_THREADING = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]


def rows(folder, records, large, boxes):
    """(name, what it is, variants args). B1/F0 rows are the ratios' references. `large`: a
    folder of 512x512 images; `boxes`: the folder's images as OD API TFRecords with boxes."""
    def augbatch(inputs, chain, xla, *beam_args, kernel=None, record_ops=True):
        runtime = json.dumps({"xla": xla, "record_ops": record_ops,
                              **({"kernel": kernel} if kernel else {})})  # (None: the default)
        return ["augbatch", "--inputs", inputs, "--chain", chain, "--runtime", runtime,
                "--beam-args", json.dumps(beam_args)]
    return [
        ("F0", "decode + re-encode only (tf.data): the floor", ["F0", "--inputs", folder]),
        ("B1", "hand-written tf.data, standard chain", ["B1", "--inputs", folder]),
        ("B2", "Keras ImageDataGenerator, standard chain", ["B2", "--inputs", folder]),
        ("augbatch --xla", "augbatch expand, standard chain, XLA, folder",
         augbatch(folder, "standard", True)),
        ("augbatch", "augbatch expand, standard chain, default (no XLA), folder",
         augbatch(folder, "standard", False)),
        ("augbatch record_ops off", "as augbatch, without the augment/ops feature "
         "(output.record_ops: false): what recording each copy's ops costs",
         augbatch(folder, "standard", False, record_ops=False)),
        ("augbatch --kernel tensorflow", "augbatch expand, standard chain, TensorFlow's "
         "resample kernel (the default before the OpenCV ones), folder",
         augbatch(folder, "standard", False, kernel="tensorflow")),
        ("augbatch --xla tfrecord", "augbatch expand, standard chain, XLA, TFRecords",
         augbatch(records, "standard", True)),
        ("augbatch --xla threads x2", "as augbatch --xla, -- " + " ".join(MULTI_THREADING),
         augbatch(folder, "standard", True, *MULTI_THREADING)),
        ("augbatch --xla multi_processing x2", "as augbatch --xla, -- " +
         " ".join(MULTI_PROCESSING), augbatch(folder, "standard", True, *MULTI_PROCESSING)),
        ("augbatch dask x2", "as augbatch, on a local Dask cluster of 2 worker processes (CPU: "
         "client, scheduler and workers)", augbatch(folder, "standard", False)
         + ["--dask-workers", "2"]),
        ("augbatch uint8", "as augbatch, with uint8.random_brightness_contrast for tf.image's "
         "brightness and contrast: albumentations' arithmetic (x * alpha + beta, no mean), so "
         "the ratio to P1 compares the same arithmetic", augbatch(folder, "standard-uint8", False)),
        ("B1 colour", "hand-written tf.data, colour-only chain",
         ["B1", "--inputs", folder, "--chain", "colour"]),
        ("augbatch --xla colour", "augbatch expand, colour-only chain, XLA",
         augbatch(folder, "colour", True)),
        ("augbatch colour", "augbatch expand, colour-only chain, default (no XLA)",
         augbatch(folder, "colour", False)),
        ("augbatch uint8 colour", "as augbatch colour, with uint8.random_brightness_contrast "
         "(as augbatch uint8)", augbatch(folder, "colour-uint8", False)),
        ("P0", "OpenCV decode + re-encode only, 2-process pool: the peer's floor",
         ["P0", "--inputs", folder]),
        ("P1", "albumentations (OpenCV), 2-process pool, standard chain",
         ["P1", "--inputs", folder]),
        ("P1 colour", "albumentations (OpenCV), 2-process pool, colour-only chain",
         ["P1", "--inputs", folder, "--chain", "colour"]),
        ("P1 tf arithmetic", "as P1, with brightness and contrast computed as tf.image "
         "computes them (the contrast around each channel's own mean: augbatch's arithmetic), "
         "as per-channel lookup tables", ["P1", "--inputs", folder, "--tf-arithmetic"]),
        ("P1 colour tf arithmetic", "as P1 colour, with tf.image's arithmetic (as P1 tf "
         "arithmetic)", ["P1", "--inputs", folder, "--chain", "colour", "--tf-arithmetic"]),
        ("augbatch 512", "augbatch expand, standard chain, default, folder of 512x512 images "
         "(a quarter of --inputs)", augbatch(large, "standard", False)),
        ("P1 512", "albumentations (OpenCV), 2-process pool, standard chain, 512x512 images",
         ["P1", "--inputs", large]),
        ("augbatch detection", "augbatch expand, standard chain, default, OD API TFRecords "
         "(1-4 boxes per image), boxes carried by the default target rules",
         augbatch(boxes, "standard", False) + ["--count-boxes"]),
        ("P1 detection", "albumentations (OpenCV), 2-process pool, standard chain, the same OD "
         "API TFRecords in and out, boxes carried by BboxParams(format='albumentations'), whose "
         "defaults are augbatch's default rules (clipped to the frame, dropped once wholly "
         "outside: no min_visibility or clip setting needed)",
         ["P1-boxes", "--inputs", boxes, "--count-boxes"]),
    ]


# The peer's rows run in a Python that has albumentations (--peer-python); skipped without one.
PEER_ROWS = ("P0", "P1", "P1 colour", "P1 tf arithmetic", "P1 colour tf arithmetic",
             "P1 512", "P1 detection")
# The peer doing augbatch's arithmetic (tf.image's contrast), for the rows on the same data.
SAME_ARITHMETIC = {"augbatch": "P1 tf arithmetic", "augbatch colour": "P1 colour tf arithmetic"}
# Rows on their own data sets: compared with the peer only (no B1 or F0 ran on their data).
OWN_DATA = ("augbatch 512", "P1 512", "augbatch detection", "P1 detection")
# Rows that read the OD API TFRecords (and warm up on such records).
DETECTION_ROWS = ("augbatch detection", "P1 detection")


def peer_missing(python):
    """Why `python` cannot run the peer's rows, or None if it can."""
    done = subprocess.run([python, "-c", "import albumentations, cv2, psutil, tensorflow"],
                          capture_output=True, text=True,
                          env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    return done.stderr.strip().splitlines()[-1] if done.returncode else None


def variant_argv(args, out, copies, warmup):
    """The arguments of `python -m bench.variants` for a row's `args`."""
    return [*args[:1], "--out", out, "--copies", str(copies),
            *(["--warmup", warmup] if warmup else []), *args[1:]]


def run_variant(args, out, copies, warmup, python=None):
    """One row, one run, in its own process: the variants' RESULT line as a dict."""
    command = [python or sys.executable, "-m", "bench.variants",
               *variant_argv(args, out, copies, warmup)]
    load = os.getloadavg()[0]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["load_before"] = load
            return result
    raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")


def summarize(name, what, runs):
    speeds = [r["outputs"] / r["wall_s"] for r in runs]
    per_cpu = [r["outputs"] / r["cpu_s"] for r in runs]
    return {"row": name, "what": what, "outputs": runs[0]["outputs"],
            "img_per_s": statistics.median(speeds), "img_per_s_best": max(speeds),
            "img_per_cpu_s": statistics.median(per_cpu),
            "main_thread_share": statistics.median(r["main_thread_cpu_s"] / r["cpu_s"]
                                                   for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs}


def startup_cost(folder, out):
    """Seconds from `augbatch expand` starting to its exit, on one input with one copy of the
    standard chain: the fixed cost of a run (imports, TensorFlow, the pipeline, tracing the
    chain; the image is ~ms)."""
    from bench.variants import STANDARD_CHAIN
    one = os.path.join(out, "one-input")
    if not os.path.isdir(one):
        classes = sorted(os.listdir(folder))
        first = sorted(os.listdir(os.path.join(folder, classes[0])))[0]
        os.makedirs(os.path.join(one, classes[0]))
        os.link(os.path.join(folder, classes[0], first), os.path.join(one, classes[0], first))
    config = os.path.join(out, "startup.json")
    with open(config, "w") as f:
        json.dump({"augment": {"chain": STANDARD_CHAIN}}, f)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "--quiet", "expand",
                           "-c", config, "-i", one, "-o", os.path.join(out, "one-output"),
                           "--overwrite", "--copies", "1"],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode:
        raise RuntimeError(f"augbatch expand failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def rss_scaling(out, small_inputs, copies):
    """Peak RSS of augbatch on `small_inputs` and 8x as many small images."""
    result = {}
    for count in (small_inputs, 8 * small_inputs):
        folder, _ = data.generate(os.path.join(out, f"small-{count}"), count, sizes=(96,),
                                  large_fraction=0.0, seed=2)
        run = run_variant(["augbatch", "--inputs", folder, "--chain", "colour", "--runtime",
                           json.dumps({"xla": True})], os.path.join(out, "run-rss"), copies,
                          None)
        result[count] = run
    low, high = (result[c]["peak_rss_mb"] for c in (small_inputs, 8 * small_inputs))
    return {"inputs": list(result), "peak_rss_mb": [low, high], "growth": high / low,
            "runs": {str(k): v for k, v in result.items()}}


def table(results, reference):
    """Medians; 'best' is each row's fastest run (the least disturbed by other load), and
    'B1 best' compares best with best. 'vs P1' / 'P1 CPU': speed over the peer's
    (albumentations, same chain) in wall time and per CPU-second, when it ran. 'main': the
    main thread's share of the CPU (for augbatch: Beam, decoding, building the records; a
    pool's main thread only writes)."""
    lines = [f"{'row':38s} {'img/s':>7s} {'best':>6s} {'img/CPU-s':>9s} {'RSS MB':>7s} "
             f"{'vs B1':>6s} {'B1 best':>7s} {'vs F0':>6s} {'vs P1':>6s} {'P1 CPU':>6s} "
             f"{'main':>5s}"]
    by_name = {r["row"]: r for r in results}
    for r in results:
        own_data = r["row"] in OWN_DATA
        b1 = None if own_data else by_name.get(reference.get(r["row"], "B1"))
        f0 = None if own_data else by_name.get("F0")
        peer = by_name.get(peer_of(r["row"]))
        def ratio(key, other, width=6):  # '-' where that row did not run
            return f"{r[key] / other[key]:{width}.2f}" if other else f"{'-':>{width}s}"
        lines.append(f"{r['row']:38s} {r['img_per_s']:7.0f} {r['img_per_s_best']:6.0f} "
                     f"{r['img_per_cpu_s']:9.0f} {r['peak_rss_mb']:7.0f} "
                     f"{ratio('img_per_s', b1)} {ratio('img_per_s_best', b1, 7)} "
                     f"{ratio('img_per_s', f0)} {ratio('img_per_s', peer)} "
                     f"{ratio('img_per_cpu_s', peer)} {r['main_thread_share']:5.0%}")
    return "\n".join(lines)


def schedule(chosen, repeats):
    """The rows' order in each round: rotated from round to round (no row always runs first),
    every augbatch row beside the peer row it is compared with, the pair's order reversed
    every other round. This machine's speed drifts by 10-30% over minutes; a row and its peer
    run side by side see it alike, so their ratio round by round (paired_ratios) cancels it."""
    groups = {}
    for row in chosen:
        name = row[0]
        key = peer_of(name) if name.startswith(("augbatch", "P1")) else name
        groups.setdefault(key, []).append(row)
    groups = list(groups.values())
    rounds = []
    for repeat in range(repeats):
        turn = repeat % len(groups)
        rounds.append([row for group in groups[turn:] + groups[:turn]
                       for row in (group if repeat % 2 == 0 else group[::-1])])
    return rounds


def paired_ratios(runs, peer_runs):
    """A row's speed over its peer's, round by round (they ran side by side: schedule), in
    wall time and per CPU-second: {"wall", "cpu": the medians, "wall_rounds", "cpu_rounds"}."""
    def speed(run, seconds):
        return run["outputs"] / run[seconds]
    ratios = {kind: [speed(r, seconds) / speed(p, seconds) for r, p in zip(runs, peer_runs)]
              for kind, seconds in (("wall", "wall_s"), ("cpu", "cpu_s"))}
    return {"wall": statistics.median(ratios["wall"]), "cpu": statistics.median(ratios["cpu"]),
            "wall_rounds": ratios["wall"], "cpu_rounds": ratios["cpu"]}


def peer_of(row):
    """The peer row a row compares with: the same chain (and data) in albumentations."""
    for suffix in (" colour", " 512", " detection"):
        if row.endswith(suffix) or suffix + " " in row:
            return "P1" + suffix
    return "P1"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=2000, help="images in the dataset")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per row")
    parser.add_argument("--rss-inputs", type=int, default=2000,
                        help="small images for the memory test (and 8x as many)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench_out"))
    parser.add_argument("--only", nargs="*", help="run only these rows")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip each row's warm-up run (quick looks, the smoke test)")
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once (quick looks "
                        "and the smoke test only: timings then share the CPUs)")
    parser.add_argument("--peer-python", default=os.environ.get("AUGBATCH_BENCH_PEER_PYTHON",
                                                               sys.executable),
                        help="a Python with albumentations (and TensorFlow, psutil) for the "
                             "peer's rows P1 (default: this one; env "
                             "AUGBATCH_BENCH_PEER_PYTHON)")
    args = parser.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    folder, records = data.generate(os.path.join(args.out, f"data-{args.inputs}"), args.inputs)
    large_inputs = max(1, args.inputs // 4)  # as many pixels as --inputs at 256x256
    large, _ = data.generate(os.path.join(args.out, f"data-512-{large_inputs}"), large_inputs,
                             sizes=(512,))
    boxes = data.detection(folder, os.path.join(args.out, f"data-{args.inputs}", "detection"))
    warm = data.generate(os.path.join(args.out, "warmup"), 16, seed=1)[0] if args.warmup else None
    warm_boxes = (data.detection(warm, os.path.join(args.out, "warmup", "detection"))
                  if args.warmup else None)
    for path in (_files(folder) + _files(os.path.dirname(records)) + _files(large)
                 + _files(os.path.dirname(boxes))):
        with open(path, "rb") as f:  # into the page cache, for every row alike
            f.read()

    every = rows(folder, records, large, boxes)
    unknown = sorted(set(args.only or ()) - {name for name, _, _ in every})
    if unknown:
        parser.error(f"--only: no row named {', '.join(map(repr, unknown))}; the rows: "
                     + ", ".join(repr(name) for name, _, _ in every))
    chosen = [r for r in every if not args.only or r[0] in args.only]
    missing = peer_missing(args.peer_python) if any(r[0] in PEER_ROWS for r in chosen) else None
    if missing:
        print(f"note: rows {', '.join(PEER_ROWS)} (albumentations) skipped: {missing} in "
              f"{args.peer_python}; pip install albumentations there or pass --peer-python",
              flush=True)
        chosen = [r for r in chosen if r[0] not in PEER_ROWS]
    runs = {name: [] for name, _, _ in chosen}
    loads = [os.getloadavg()[0]]

    def one(repeat, index, name, variant_args):
        print(f"[{repeat + 1}/{args.repeats}] {name} ...", file=sys.stderr, flush=True)
        result = run_variant(variant_args, os.path.join(args.out, f"run-{index}"),
                             args.copies, warm_boxes if name in DETECTION_ROWS else warm,
                             python=args.peer_python if name in PEER_ROWS else None)
        loads.append(os.getloadavg()[0])
        return result

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = []
        for repeat, order in enumerate(schedule(chosen, args.repeats)):
            futures += [(name, pool.submit(one, repeat, index, name, variant_args))
                        for index, (name, _, variant_args) in enumerate(order)]
        startup = pool.submit(startup_cost, folder, args.out)
        rss = pool.submit(rss_scaling, args.out, args.rss_inputs, args.copies)
        for name, future in futures:
            runs[name].append(future.result())
    results = [summarize(name, what, runs[name]) for name, what, _ in chosen]
    reference = {"B1 colour": "B1 colour", "augbatch --xla colour": "B1 colour",
                 "augbatch colour": "B1 colour", "augbatch uint8 colour": "B1 colour",
                 "P1 colour": "B1 colour",
                 "P1 colour tf arithmetic": "B1 colour"}

    by_name = {r["row"]: r for r in results}
    vs_peer = {r["row"]: {"wall": r["img_per_s"] / peer["img_per_s"],
                          "cpu": r["img_per_cpu_s"] / peer["img_per_cpu_s"],
                          # (the augbatch rows ran beside their peer: schedule)
                          **({"paired": paired_ratios(runs[r["row"]], runs[peer["row"]])}
                             if r["row"].startswith("augbatch") else {})}
               for r in results for peer in [by_name.get(peer_of(r["row"]))] if peer}
    vs_same_arithmetic = {
        row: {"wall": by_name[row]["img_per_s"] / by_name[peer]["img_per_s"],
              "cpu": by_name[row]["img_per_cpu_s"] / by_name[peer]["img_per_cpu_s"]}
        for row, peer in SAME_ARITHMETIC.items() if row in by_name and peer in by_name}
    report = {"results": results, "vs_peer": vs_peer,
              "vs_peer_same_arithmetic": vs_same_arithmetic,
              "startup_s": startup.result(),
              "rss_scaling": rss.result(),
              "load_average": {"min": min(loads), "max": max(loads),
                               "median": statistics.median(loads)},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "settings": vars(args)}
    if all(name in runs for name in ("B1", "F0")):
        print(table(results, reference))
    for r in results:
        if "written" in r["runs"][0]:  # the detection rows: what they wrote, read back
            written = r["runs"][0]["written"]
            print(f"{r['row']}: {written['records']} records, {written['records_with_boxes']} "
                  f"with boxes, {written['boxes']} boxes")
    for row, ratios in vs_peer.items():
        if "paired" in ratios:
            paired = ratios["paired"]
            print(f"{row} vs {peer_of(row)}, round by round (run side by side), wall: "
                  + ", ".join(f"{x:.2f}" for x in paired["wall_rounds"])
                  + f" (median {paired['wall']:.2f}); CPU: "
                  + ", ".join(f"{x:.2f}" for x in paired["cpu_rounds"])
                  + f" (median {paired['cpu']:.2f})")
    for row, ratios in vs_same_arithmetic.items():
        print(f"{row} vs {SAME_ARITHMETIC[row]} (albumentations doing tf.image's "
              f"arithmetic): wall {ratios['wall']:.2f}, CPU {ratios['cpu']:.2f}")
    print(f"start-up (CLI start to exit, one input, one copy): {report['startup_s']:.1f} s")
    rss = report["rss_scaling"]
    print(f"peak RSS {rss['inputs'][0]} -> {rss['inputs'][1]} small inputs: "
          f"{rss['peak_rss_mb'][0]:.0f} -> {rss['peak_rss_mb'][1]:.0f} MB "
          f"({rss['growth']:.2f}x)")
    print(f"load average during the runs: {min(loads):.1f} to {max(loads):.1f} "
          f"on {os.cpu_count()} CPUs" + ("  (busy machine: timings are noisy)"
                                        if max(loads) > 0.5 * (os.cpu_count() or 1) else ""))
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"table: {path}")
    return report


def _files(folder):
    return [os.path.join(d, name) for d, _, names in os.walk(folder) for name in names]


if __name__ == "__main__":
    main()
