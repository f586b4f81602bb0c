"""Training, one module per stage.

* :mod:`~instasam.training.labels` - the fixed labels a tile is trained on (S from SAM
  prompted with the points, cluster + Voronoi, ground truth; cached), for both
  architectures;
* :mod:`~instasam.training.crops` - the nuclei network's augmented crops with their
  foreground and distance targets, and stain/colour jitter;
* :mod:`~instasam.training.precision` - bf16 where the CPU computes it natively;
* :mod:`~instasam.training.validation` - the nuclei network on whole validation tiles, and
  the post-processing thresholds chosen on them;
* :mod:`~instasam.training.loop` - the nuclei network's optimiser loop: EMA, checkpoints,
  resume;
* :mod:`~instasam.training.instasam` - the paper's training of adapters, mask decoder and
  nuclei decoder on SAM's embedding (``instasam train --arch instasam``).
"""
