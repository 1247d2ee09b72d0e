"""Evaluation: streamed overlap scores, surface distances, BraTS regions and lesions.

``overlap`` (confusion matrix -> Dice/IoU/Tversky/...), ``surface`` (HD, HD95, ASSD, NSD),
``brats`` (regions from data_catalog cards, lesion-wise as brats-evaluation), ``align``
(grid checks, nearest resampling), ``evaluate`` (public API), ``report`` (tables, plots).
"""
