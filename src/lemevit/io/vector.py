"""Vector outputs: detections as GeoJSON polygons placed on the ground."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lemevit.data.images import TIFF_EXTENSIONS, optional_rasterio
from lemevit.io.atomic import atomic_path

__all__ = ["write_detection_geojson"]


def write_detection_geojson(path: Path, quads: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                            class_names: list[str], output: Path) -> bool:
    """Write the boxes ``quads`` (``(n, 4, 2)`` pixel corners) of the scene ``path`` as GeoJSON polygons in the
    scene's coordinate system, when ``path`` is a georeferenced GeoTIFF (and rasterio is installed); returns
    whether it wrote ``output``."""
    rasterio = optional_rasterio()
    if rasterio is None or path.suffix.lower() not in TIFF_EXTENSIONS:
        return False
    with rasterio.open(path) as src:
        if src.crs is None or src.transform.is_identity:
            return False
        transform, crs = src.transform, src.crs.to_string()
    a, b, c, d, e, f = transform[:6]  # pixel (column, row) -> scene coordinates
    x, y = quads[..., 0].astype(np.float64), quads[..., 1].astype(np.float64)
    rings = np.stack([a * x + b * y + c, d * x + e * y + f], axis=-1)
    rings = np.concatenate([rings, rings[:, :1]], axis=1).tolist()  # GeoJSON rings are closed
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                 "properties": {"class": class_names[label], "score": float(score)}}
                for ring, label, score in zip(rings, labels.tolist(), scores, strict=True)]
    collection = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                  "features": features}
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(collection))
    return True
