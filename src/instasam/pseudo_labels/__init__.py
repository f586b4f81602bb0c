"""Pseudo instance labels from point annotations.

* :mod:`~instasam.pseudo_labels.rules` - the entropy/overlap rule of Eq. 2-4.
* :mod:`~instasam.pseudo_labels.sam` - prompting the SAM mask decoder with the points.
* :mod:`~instasam.pseudo_labels.voronoi` - cluster + Voronoi labels (Qu et al. 2019).
* :mod:`~instasam.pseudo_labels.quality` - how good pseudo labels are against ground truth.
"""
