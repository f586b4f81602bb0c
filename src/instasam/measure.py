"""Per-nucleus measurements: size, shape and stain, the table a pathologist analyses.

Geometry comes from scikit-image's ``regionprops``; stain from its colour deconvolution
(``rgb2hed``, Ruifrok & Johnston's H&E-DAB matrix): the optical density of each channel
(``-log10`` of the transmitted light, divided by 6 in ``rgb2hed``'s scale) unmixed into
haematoxylin and eosin. Lengths are in the label map's pixels times ``scale`` (level-0
pixels per label pixel) and, with ``mpp``, also in µm. Names follow QuPath's style so the
values show in its measurement tables.
"""

from __future__ import annotations

import math

import numpy as np

#: Geometry read from regionprops, with the QuPath-style name of each (px units).
GEOMETRY = {
    "perimeter": "Perimeter px",
    "equivalent_diameter_area": "Equivalent diameter px",
    "axis_major_length": "Major axis px",
    "axis_minor_length": "Minor axis px",
}
SHAPE = {"eccentricity": "Eccentricity", "solidity": "Solidity"}
STAIN = ("Haematoxylin OD mean", "Eosin OD mean")
RGB = ("Red mean", "Green mean", "Blue mean")


def nucleus_measurements(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    scale: float = 1.0,
    mpp: float | None = None,
) -> dict[int, dict[str, float]]:
    """Measurements of every nucleus of an instance map, by id.

    Parameters
    ----------
    labels : ndarray ``(H, W)``
        Instance map, 0 background.
    image : ndarray ``(H, W, 3)`` uint8, optional
        The RGB tile the map segments; adds mean haematoxylin and eosin optical density
        and mean R, G, B.
    scale : float
        Level-0 pixels per label pixel (lengths are multiplied by it, areas by its square).
    mpp : float, optional
        Microns per level-0 pixel; adds the lengths in µm.

    Returns
    -------
    dict
        ``{id: {name: value}}`` with ``Perimeter px``, ``Equivalent diameter px``,
        ``Major axis px``, ``Minor axis px``, ``Eccentricity``, ``Solidity``,
        ``Orientation deg`` (major axis against the image's x axis, counter-clockwise as
        seen on screen, in (-90, 90]); with ``mpp`` the lengths in µm; with ``image`` the
        stain and colour means. Areas and centroids are written by
        :func:`instasam.io.qupath.instance_features` itself.
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if not labels.any():
        return {}
    props = ["label", *GEOMETRY, *SHAPE, "orientation"]
    intensity = None
    if image is not None:
        intensity = np.concatenate([stain_densities(image), image.astype(np.float32)], axis=-1)
        props.append("intensity_mean")
    table = regionprops_table(labels.astype(np.int32), intensity_image=intensity, properties=props)
    out: dict[int, dict[str, float]] = {}
    for i, label in enumerate(table["label"]):
        values = {name: float(table[key][i]) * scale for key, name in GEOMETRY.items()}
        if mpp:
            values |= {name.replace(" px", " µm"): values[name] * mpp for name in GEOMETRY.values()}
        values |= {name: float(table[key][i]) for key, name in SHAPE.items()}
        values["Orientation deg"] = _orientation_degrees(float(table["orientation"][i]))
        if intensity is not None:
            means = [float(table[f"intensity_mean-{c}"][i]) for c in range(5)]
            values |= dict(zip((*STAIN, *RGB), means, strict=True))
        out[int(label)] = {k: round(v, 4) for k, v in values.items()}
    return out


def stain_densities(image: np.ndarray) -> np.ndarray:
    """``(H, W, 2)`` haematoxylin and eosin optical densities of an RGB uint8 image."""
    from skimage.color import rgb2hed

    return rgb2hed(np.asarray(image)[..., :3])[..., :2].astype(np.float32)


def _orientation_degrees(radians: float) -> float:
    """regionprops' angle (row axis to major axis) as degrees from the x axis, y up."""
    degrees = 90.0 - math.degrees(radians)  # from the column (x) axis, y pointing down
    degrees = degrees - 180.0 if degrees > 90.0 else degrees
    return (-degrees if degrees != 90.0 else 90.0) + 0.0  # no -0.0
