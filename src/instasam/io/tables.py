"""Nuclei as a table: one CSV row per nucleus, the form a cohort is analysed in.

The columns are the measurements written into each QuPath detection (QuPath's names, so
a table and QuPath's own measurement export line up), after the feature's id. A
measurement a nucleus lacks (the µm columns without a pixel size, the stain columns with
``--no-measurements``) is left empty. The file appears only when complete.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from instasam.io.atomic import atomic_path

#: Column order of a nuclei table (after ``id``).
NUCLEUS_COLUMNS = (
    "Centroid X px",
    "Centroid Y px",
    "Centroid X µm",
    "Centroid Y µm",
    "Area px^2",
    "Area µm^2",
    "Perimeter px",
    "Perimeter µm",
    "Equivalent diameter px",
    "Equivalent diameter µm",
    "Major axis px",
    "Major axis µm",
    "Minor axis px",
    "Minor axis µm",
    "Eccentricity",
    "Solidity",
    "Orientation deg",
    "Haematoxylin OD mean",
    "Eosin OD mean",
    "Red mean",
    "Green mean",
    "Blue mean",
)


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of a measurement (NaN when there is no value)."""

    median: float
    iqr: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if not finite.size:
            return cls(math.nan, math.nan)
        q1, q2, q3 = np.percentile(finite, [25, 50, 75])
        return cls(float(q2), float(q3 - q1))


class NucleiTableWriter:
    """Stream QuPath detection features into a CSV table at ``path``.

    Used as a context manager, the table is renamed onto ``path`` when the block ends
    without an error and discarded otherwise. The areas (µm²) and haematoxylin optical
    densities written are kept for :meth:`spread` (16 bytes per nucleus).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.count = 0
        self._values: dict[str, list[float]] = {"Area µm^2": [], "Haematoxylin OD mean": []}
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._fh: TextIO = self._stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
        self._csv = csv.writer(self._fh)
        self._csv.writerow(["id", *NUCLEUS_COLUMNS])

    def write(self, feature: dict[str, Any]) -> None:
        """Append the nucleus of one detection feature."""
        values = feature["properties"]["measurements"]
        self._csv.writerow([feature.get("id", ""), *(values.get(c, "") for c in NUCLEUS_COLUMNS)])
        for name, kept in self._values.items():
            kept.append(float(values.get(name, math.nan)))
        self.count += 1

    def spread(self, column: str) -> Spread:
        """Median and IQR of ``Area µm^2`` or ``Haematoxylin OD mean`` over the rows."""
        return Spread.of(self._values[column])

    def __enter__(self) -> NucleiTableWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.__exit__(*exc_info)  # closes the file, then renames or removes it
