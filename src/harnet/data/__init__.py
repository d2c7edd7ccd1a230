"""Detection datasets (COCO, VOC, CSV), built-in data generators, transforms and batching.

Every dataset returns ``(image, target)`` with a float32 ``tv_tensors.Image`` and
``{"boxes": BoundingBoxes XYXY, "labels": int64 0..K-1, "image_id": int}``, and exposes
``class_names``, ``category_ids`` and a ``pycocotools`` ``coco`` ground truth for COCOeval.
"""

from harnet.data.coco import CocoDataset
from harnet.data.csv_dataset import CsvDataset
from harnet.data.loader import collate_fn
from harnet.data.records import DetectionRecord, RecordDataset
from harnet.data.shapes import SHAPE_CLASSES, generate_shapes
from harnet.data.transforms import build_transforms
from harnet.data.trees import convert_trees
from harnet.data.voc import VOCDataset

__all__ = [
    "SHAPE_CLASSES",
    "CocoDataset",
    "CsvDataset",
    "DetectionRecord",
    "RecordDataset",
    "VOCDataset",
    "build_transforms",
    "collate_fn",
    "convert_trees",
    "generate_shapes",
]
