"""Readers and writers: images, instance label maps, datasets, points, QuPath, slides."""
