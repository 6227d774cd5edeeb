"""The napari docks. The only package of napari-attribution that imports qtpy, magicgui or ``napari.qt``.

* :class:`ExplainWidget` — one method on the selected scan; heatmap + prediction layers, colour bar, cost check;
  a layer method swept over several network layers (one layer with a "layer" axis), vebi's relevant features
  (fitted in the worker), and the heatmap compared with landmarks painted as a Labels layer.
* :class:`CompareWidget` — several methods in one run, side by side in grid mode, with an agreement table.

Both are thin: they read the form into a :class:`~napari_attribution.runs.jobs.ExplainRequest`, run
:func:`~napari_attribution.runs.jobs.run_job` (``na.explain`` / ``na.compare``) in a napari worker thread
with ``progress`` and ``cancel``, and add the layer data tuples made by :mod:`napari_attribution.layers`.
"""

from ._compare import CompareWidget
from ._explain import ExplainWidget

__all__ = ["CompareWidget", "ExplainWidget"]
