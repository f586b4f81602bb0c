"""The model: a frozen SAM-family backbone with adapters, and the prompt-free nuclei decoder.

* :mod:`~instasam.model.backbone` - the interface every backbone implements and the registry.
* :mod:`~instasam.model.adapters` - Eq. 1 adapters and the high-frequency image components.
* :mod:`~instasam.model.lite_medsam` - LiteMedSAM (TinyViT), the default backbone.
* :mod:`~instasam.model.sam_vit` - the official SAM ViT-B/L/H.
* :mod:`~instasam.model.nuclei_decoder` - foreground and distance maps without prompts.
* :mod:`~instasam.model.instasam` - the assembled model.
"""

from instasam.model.backbone import Backbone, EncoderOutput, ImageEncoder, build_backbone

__all__ = ["Backbone", "EncoderOutput", "ImageEncoder", "build_backbone"]
