"""Cut the bundled demo sample from MoNuSeg (run once by a maintainer; kept for provenance).

Two 256x256 crops, in MoNuSeg's own layout (TIFF image + Aperio XML polygons), so the demo
exercises ``instasam prepare monuseg``. Polygons are clipped to the crop exactly
(Sutherland-Hodgman against the crop rectangle) and shifted to crop coordinates.

    python scripts/make_sample.py ../shared/data/monuseg src/instasam/data/sample
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile

from instasam.io.images import read_rgb

# (split folder, tile id, top, left): a training tile and a held-out tile, both breast.
CROPS = [
    ("train", "TCGA-A7-A13E-01Z-00-DX1", 300, 300),
    ("train", "TCGA-E2-A1B5-01Z-00-DX1", 400, 500),
]
SIZE = 256


def clip_polygon(
    points: list[tuple[float, float]], lo: float, hi: float
) -> list[tuple[float, float]]:
    """Clip a polygon to the square [lo, hi] x [lo, hi] (Sutherland-Hodgman)."""
    edges = [(0, lo, True), (0, hi, False), (1, lo, True), (1, hi, False)]
    for axis, bound, keep_above in edges:
        if not points:
            break
        sign = 1.0 if keep_above else -1.0
        out = []
        for i, cur in enumerate(points):
            prev = points[i - 1]
            cur_in = sign * (cur[axis] - bound) >= 0
            if cur_in != (sign * (prev[axis] - bound) >= 0):
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(tuple(prev[k] + t * (cur[k] - prev[k]) for k in range(2)))
            if cur_in:
                out.append(cur)
        points = out
    return points


def without_collinear(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Drop vertices that lie on the straight line through their neighbours."""
    kept = []
    for i, cur in enumerate(points):
        prev, nxt = points[i - 1], points[(i + 1) % len(points)]
        cross = (cur[0] - prev[0]) * (nxt[1] - cur[1]) - (cur[1] - prev[1]) * (nxt[0] - cur[0])
        if abs(cross) > 1e-9:
            kept.append(cur)
    return kept


def main(src: Path, out: Path) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, tile, top, left in CROPS:
        image = read_rgb(src / split / "images" / f"{tile}.tif")[
            top : top + SIZE, left : left + SIZE
        ]
        stem = f"{tile}_y{top}_x{left}"
        tifffile.imwrite(out / "images" / f"{stem}.tif", image, compression="zlib")
        tree = ET.parse(src / split / "annotations" / f"{tile}.xml")
        root = ET.Element("Annotations", tree.getroot().attrib)
        regions = ET.SubElement(ET.SubElement(root, "Annotation", {"Id": "1"}), "Regions")
        kept = 0
        for region in tree.getroot().iter("Region"):
            pts = [
                (float(v.get("X")) - left, float(v.get("Y")) - top) for v in region.iter("Vertex")
            ]
            clipped = without_collinear(clip_polygon(pts, 0.0, float(SIZE)))
            if (
                len(clipped) < 3
                or np.ptp([p[0] for p in clipped]) < 1
                or np.ptp([p[1] for p in clipped]) < 1
            ):
                continue
            kept += 1
            r = ET.SubElement(regions, "Region", {"Id": str(kept)})
            vertices = ET.SubElement(r, "Vertices")
            for x, y in clipped:
                ET.SubElement(vertices, "Vertex", {"X": f"{x:g}", "Y": f"{y:g}"})
        ET.indent(root)
        ET.ElementTree(root).write(
            out / "annotations" / f"{stem}.xml", encoding="utf-8", xml_declaration=True
        )
        print(stem, kept, "nuclei")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
