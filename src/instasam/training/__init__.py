"""Training of the full-resolution nuclei network, one module per stage.

* :mod:`~instasam.training.labels` - the fixed labels a tile is trained on (S, cluster +
  Voronoi, ground truth, or a folder written by ``instasam pseudo``);
* :mod:`~instasam.training.crops` - augmented crops with their foreground and distance
  targets, and stain/colour jitter;
* :mod:`~instasam.training.precision` - bf16 where the CPU computes it natively;
* :mod:`~instasam.training.validation` - whole validation tiles, and the post-processing
  thresholds chosen on them;
* :mod:`~instasam.training.loop` - the optimiser loop: EMA, checkpoints, resume.

The paper's own training (adapters, mask decoder, nuclei decoder on SAM's embedding) is
:mod:`instasam.train`.
"""
