"""instasam: nuclei instance segmentation from one point per nucleus (InstaSAM).

The package follows the data's path, one module per stage::

    io/ -> points -> pseudo_labels/ -> model/ -> train -> predict/ -> postprocess -> metrics -> cli/
"""

__version__ = "0.1.0"

#: Value used in pseudo-label maps for pixels that carry no loss.
IGNORE = -1
