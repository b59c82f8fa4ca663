"""augbatch: offline dataset augmentation into deterministic, sharded TFRecords.

Also the file Beam ships to remote workers: `-- --setup_file ./setup.py`.
"""
import os

from setuptools import find_packages, setup

# Two tested stacks, chosen by the Python version (pip reads the markers):
# - Python 3.9-3.11, the pinned stack: TF 2.15.1 + tensorflow-addons 0.23 (tfa needs TF < 2.16).
# - Python 3.12, the modern stack: TF 2.16+ with Keras 3. tensorflow-addons has ended and cannot
#   install there; the tfa.image ops then run on pipeline/ops/tfa_core.py (pure TF, tfa's
#   signatures). Exact tested versions: constraints/modern.txt.
PINNED = 'python_version < "3.12"'
MODERN = 'python_version >= "3.12"'
INSTALL_REQUIRES = [
    f"tensorflow==2.15.1; {PINNED}",
    f"tensorflow-addons==0.23.0; {PINNED}",
    f"numpy<2; {PINNED}",
    # The CPU resample kernel (runtime.kernel: opencv). 4.11+ is built for numpy 2, which
    # breaks TF 2.15's numpy<2.
    f"opencv-python-headless>=4.8,<4.11; {PINNED}",
    f"tensorflow>=2.16,<2.22; {MODERN}",
    f"opencv-python-headless>=4.11,<5; {MODERN}",
    "apache-beam[tfrecord]==2.77.0",
    "google-crc32c>=1.5",
    "click>=8.1",
    "pyyaml>=6.0",
    "pillow>=10.0",
    "tqdm>=4.66",
    # numpy's BLAS kept on one thread in workers (augment.configure_threads).
    "threadpoolctl>=3.1",
]

setup(
    name="augbatch",
    version="0.1.0",
    description="Offline dataset augmentation batch processor: images or TFRecords in, "
                "N deterministic augmented copies out as sharded TFRecords (Apache Beam).",
    long_description=(open("README.md", encoding="utf-8").read()
                      if os.path.exists("README.md") else ""),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9,<3.13",
    packages=find_packages(include=["pipeline", "pipeline.*"]),
    # The native ops' sources: built on the user's machine at first use (ops/native.py).
    package_data={"pipeline.ops": ["native_*.cc", "native_*.h"]},
    py_modules=["cli"],
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # scipy: the idg tests compare against Keras's ImageDataGenerator, which needs it.
        # tensorflow-datasets: tests load output.tfds folders with tfds.builder_from_directory.
        # Its tensorflow-metadata 1.17+ needs protobuf 5, which TF 2.15 refuses.
        "dev": ["pytest>=7.4", "pytest-xdist>=3.5", "scipy>=1.11",
                "tensorflow-datasets>=4.9.10,<4.10", f"tensorflow-metadata<1.17; {PINNED}"],
        # Tested with 2026.8.0 on both stacks (tests/test_dask.py); pipeline/dask_runner.py
        # leans on Beam's and dask's internals, so other versions wait until they are tested.
        "dask": ["dask[distributed]>=2026.8.0,<2026.9"],
        # Submitting to Dataflow (and gs:// paths): apache-beam[gcp] needs protobuf >= 6, which
        # TensorFlow 2.15 (the pinned stack) refuses; so the modern stack only. On the pinned
        # stack this extra installs nothing and `--runner dataflow` says what to do.
        "dataflow": [f"apache-beam[gcp]==2.77.0; {MODERN}"],
    },
    entry_points={"console_scripts": ["augbatch = cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
)
