"""Conditions and how many of them are computed at once.

:mod:`.grids` names the conditions of a sweep (``"layers"``, ``"heads:3"``, ...);
:mod:`.logits` computes every condition's logits from one unablated pass (tail-only forwards
from the first edited layer); :mod:`.choices` scores multiple-choice documents under every
condition on a shared context; :mod:`.generation` decodes every condition of a generation task
in one batch, by default verifying the baseline's generation under each condition and decoding
only from where it departs (:mod:`.verify`, :mod:`.verify_passes`, :mod:`.divergence`). The sweep runner and attribution both build on this package; it knows nothing of
run directories or executors.
"""
