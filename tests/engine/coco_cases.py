"""Random COCO ground truth and detections for the tests of harnet.engine's matching and analysis."""

from __future__ import annotations

from typing import Any

import numpy as np

CATEGORIES = [3, 7, 9]  # sparse ids, as COCO's own


def random_case(seed: int, images: int = 25, crowd: float = 0.1, crowded_image: bool = False
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Objects with detections near them (some of another class), detections on nothing, crowd regions, and
    scores rounded to 0.05 so that ties are common: the cases where an order or tie rule could differ."""
    rng = np.random.default_rng(seed)
    imgs, anns, dets = [], [], []
    for i in range(images):
        image_id = 100 + 3 * i  # not 0..n-1, not in file order below
        imgs.append({"id": image_id, "file_name": f"{i}.png", "width": 300, "height": 300})
        for _ in range(int(rng.integers(0, 7))):
            x, y = rng.uniform(0, 220, 2)
            w, h = rng.uniform(3, 80, 2)
            cat = int(rng.choice(CATEGORIES))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": float(w * h), "iscrowd": int(rng.random() < crowd)})
            for _ in range(int(rng.integers(0, 4))):
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                label = cat if rng.random() < 0.8 else int(rng.choice(CATEGORIES))
                dets.append({"image_id": image_id, "category_id": label,
                             "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                             "score": float(np.round(rng.random() * 20) / 20)})
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 220, 2)
            w, h = rng.uniform(3, 60, 2)
            dets.append({"image_id": image_id, "category_id": int(rng.choice(CATEGORIES)), "bbox": [x, y, w, h],
                         "score": float(np.round(rng.random() * 20) / 20)})
    if crowded_image:  # more than 100 detections of one class on one image: the max_dets cut applies
        for _ in range(130):
            x, y = rng.uniform(0, 250, 2)
            dets.append({"image_id": imgs[0]["id"], "category_id": CATEGORIES[0], "bbox": [x, y, 20.0, 20.0],
                         "score": float(rng.random())})
        anns += [{"id": len(anns) + k + 1, "image_id": imgs[0]["id"], "category_id": CATEGORIES[0],
                  "bbox": [10.0 * k, 5.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0} for k in range(20)]
    rng.shuffle(dets)
    gt = {"images": imgs, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORIES]}
    return gt, dets
