"""Instances and panoptic segmentation: tiled connected components, tables, Mask R-CNN, SAM."""
