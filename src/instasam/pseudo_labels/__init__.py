"""Pseudo instance labels from point annotations.

* :mod:`~instasam.pseudo_labels.rules` - the entropy/overlap rule of Eq. 2-4 and the
  negative prompts drawn from the other points.
* :mod:`~instasam.pseudo_labels.sam` - prompting the SAM mask decoder with the points.
* :mod:`~instasam.pseudo_labels.voronoi` - cluster + Voronoi labels (Qu et al. 2019).
* :mod:`~instasam.pseudo_labels.quality` - how good pseudo labels are against ground truth.

Every map is ``int32`` (H, W): :data:`instasam.IGNORE` (-1), 0 background, k the nucleus
of point k-1. :mod:`~instasam.pseudo_labels.sam` needs the model and is not imported here.
"""

from instasam.pseudo_labels.quality import pseudo_label_quality
from instasam.pseudo_labels.rules import (
    RuleStats,
    labels_from_probabilities,
    labels_from_probabilities_np,
    negative_prompts,
    select_pseudo_labels,
    select_pseudo_labels_np,
)
from instasam.pseudo_labels.voronoi import (
    cluster_label,
    cluster_voronoi_labels,
    voronoi_cells,
    voronoi_edges,
    voronoi_label,
)

__all__ = [
    "RuleStats",
    "cluster_label",
    "cluster_voronoi_labels",
    "labels_from_probabilities",
    "labels_from_probabilities_np",
    "negative_prompts",
    "pseudo_label_quality",
    "select_pseudo_labels",
    "select_pseudo_labels_np",
    "voronoi_cells",
    "voronoi_edges",
    "voronoi_label",
]
