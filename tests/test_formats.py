"""Labelled datasets as labelling tools export them (pipeline/formats): COCO, YOLO, Pascal VOC,
image + mask folder pairs and CSV / JSON-lines manifests, each built here from the sample
photos and the hand-drawn outlines of sample_data/detection, expanded end to end and read back."""
import csv
import importlib.util
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipeline import sources
from pipeline.formats import coco
from tests.conftest import ROOT, SAMPLE_IMAGES, assert_accounted, run_job

BOX_KEYS = ("ymin", "xmin", "ymax", "xmax")
SPEC = {"image/encoded": tf.io.FixedLenFeature((), tf.string),
        "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=b""),
        "image/class/label": tf.io.FixedLenFeature((), tf.int64, default_value=-1),
        "image/class/text": tf.io.FixedLenFeature((), tf.string, default_value=b""),
        "augment/copy_index": tf.io.FixedLenFeature((), tf.int64),
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
        "image/object/class/text": tf.io.VarLenFeature(tf.string),
        "image/object/mask": tf.io.VarLenFeature(tf.string),
        "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
        "image/object/difficult": tf.io.VarLenFeature(tf.int64),
        "image/object/keypoint/x": tf.io.VarLenFeature(tf.float32),
        "image/object/keypoint/y": tf.io.VarLenFeature(tf.float32),
        "image/object/keypoint/visibility": tf.io.VarLenFeature(tf.int64),
        "image/segmentation/class/encoded": tf.io.VarLenFeature(tf.string),
        **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32) for k in BOX_KEYS}}
FLIP = [{"op": "tf.image.flip_left_right"}]


def _outlines():
    """sample_data/make_detection_data.py's outlines: photo -> [(class, kind, points)]."""
    spec = importlib.util.spec_from_file_location(
        "make_detection_data", os.path.join(ROOT, "sample_data", "make_detection_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DETECTION = _outlines()


def scene():
    """The OD API sample records: photo name -> (bytes, width, height, [(class, name,
    (x0, y0, x1, y1) pixels, polygon points)])."""
    out = {}
    path = os.path.join(ROOT, "sample_data", "detection", "objects.tfrecord")
    for record in tf.data.TFRecordDataset(path):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        name = f["image/filename"].bytes_list.value[0].decode()
        width, height = f["image/width"].int64_list.value[0], f["image/height"].int64_list.value[0]
        boxes = np.stack([f[f"image/object/bbox/{k}"].float_list.value for k in BOX_KEYS], 1)
        boxes = np.round(boxes * [height, width, height, width]).astype(int)
        objects = []
        for (label, kind, points), box in zip(DETECTION.ANNOTATIONS[name], boxes):
            ymin, xmin, ymax, xmax = (int(v) for v in box)
            if kind == "ellipse":  # as a polygon of 16 points on the ellipse
                (x0, y0), (x1, y1) = points
                t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                points = np.stack([(x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(t),
                                   (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(t)], 1).tolist()
            objects.append((label, DETECTION.CLASSES[label], (xmin, ymin, xmax, ymax), points))
        out[name] = (f["image/encoded"].bytes_list.value[0], width, height, objects)
    return out


def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_coco(root, photos, with_masks=True):
    images, annotations = [], []
    for image_id, (name, (data, width, height, objects)) in enumerate(sorted(photos.items()), 1):
        put(os.path.join(root, "images", name), data)
        images.append({"id": image_id, "file_name": f"images/{name}", "width": width,
                       "height": height})
        for label, _, (x0, y0, x1, y1), points in objects:
            annotation = {"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            if with_masks:
                annotation["segmentation"] = [np.ravel(points).tolist()]
            annotations.append(annotation)
    categories = [{"id": i, "name": n} for i, n in DETECTION.CLASSES.items()]
    put(os.path.join(root, "annotations.json"), json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return str(root)


def write_yolo(root, photos):
    names = {i - 1: n for i, n in DETECTION.CLASSES.items()}
    put(os.path.join(root, "data.yaml"), "names:\n" + "".join(
        f"  {i}: {n}\n" for i, n in names.items()))
    for name, (data, width, height, objects) in photos.items():
        put(os.path.join(root, "images", name), data)
        put(os.path.join(root, "labels", os.path.splitext(name)[0] + ".txt"), "".join(
            f"{label - 1} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
            f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n"
            for label, _, (x0, y0, x1, y1), _ in objects))
    return str(root)


def voc_xml(filename, width, height, objects, difficult=()):
    return (f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            + "".join(f"<object><name>{text}</name><pose>Unspecified</pose>"
                      f"<truncated>0</truncated><difficult>{int(i in difficult)}</difficult>"
                      f"<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax>"
                      f"<ymax>{y1}</ymax></bndbox></object>"
                      for i, (_, text, (x0, y0, x1, y1), _) in enumerate(objects))
            + "</annotation>")


def write_voc(root, photos):
    for name, (data, width, height, objects) in photos.items():
        flat = name.replace("/", "_")
        put(os.path.join(root, "JPEGImages", flat), data)
        put(os.path.join(root, "Annotations", os.path.splitext(flat)[0] + ".xml"),
            voc_xml(flat, width, height, objects))
    return str(root)


def outputs(out):
    files = sorted(p.path for p in os.scandir(out) if ".tfrecord" in p.name)
    rows = []
    for record in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(record, SPEC)
        row = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
               for k, v in parsed.items()}
        row["image"] = tf.io.decode_image(parsed["image/encoded"]).numpy()
        row["key"] = tf.train.Example.FromString(record.numpy()).features.feature[
            "image/source_id"].bytes_list.value[0].decode()
        row["boxes"] = np.stack([row[f"image/object/bbox/{k}"] for k in BOX_KEYS], 1)
        rows.append(row)
    return rows


def pixel_boxes(row):
    height, width = row["image"].shape[:2]
    return row["boxes"] * [height, width, height, width]


def test_the_same_scene_from_coco_yolo_voc_and_od_api_gives_the_same_boxes(tmp_path):
    photos = scene()
    inputs = {"coco": write_coco(tmp_path / "coco", photos, with_masks=False),
              "yolo": write_yolo(tmp_path / "yolo", photos),
              "voc": write_voc(tmp_path / "voc", photos),
              "tfrecord": os.path.join(ROOT, "sample_data", "detection", "objects.tfrecord")}
    boxes = {}
    for kind, path in inputs.items():
        manifest = run_job(path, tmp_path / f"out-{kind}", FLIP, copies=1, format="png")
        assert manifest["input"]["kind"] == kind  # told from the files
        assert_accounted(manifest)
        assert manifest["counts"]["written"] == 4 and manifest["counts"]["errored"] == 0
        for row in outputs(tmp_path / f"out-{kind}"):
            # the photo, whatever the key (COCO images/portraits/x.jpg, VOC portraits_x.jpg;
            # the TFRecord keeps its image/filename)
            seen = (row["image/filename"].decode() or row["key"]).replace("/", "_")
            photo = next(n for n in photos if n.replace("/", "_") in seen)
            boxes[kind, photo, int(row["augment/copy_index"])] = (
                pixel_boxes(row), list(row["image/object/class/text"]))
    for (kind, photo, copy), (found, texts) in boxes.items():
        _, width, height, objects = photos[photo]
        truth = np.array([(y0, x0, y1, x1) for _, _, (x0, y0, x1, y1), _ in objects], float)
        if copy == 1:  # mirrored
            truth[:, [1, 3]] = width - truth[:, [3, 1]]
        assert np.abs(found - truth).max() <= 1.0, (kind, photo, copy)
        assert texts == [text.encode() for _, text, _, _ in objects], (kind, photo)
