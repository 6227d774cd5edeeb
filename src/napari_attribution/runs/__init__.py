"""What a dock or the CLI runs, without Qt or napari: requests, outcomes, the cost estimate, fitting, the model
choices, and the one job wrapper that computes in a background thread.

* :mod:`~napari_attribution.runs.jobs` — :class:`~napari_attribution.runs.jobs.ExplainRequest` in,
  :class:`~napari_attribution.runs.jobs.Outcome` out (:func:`~napari_attribution.runs.jobs.run_job`), never an
  exception; the cost estimate; :func:`~napari_attribution.runs.jobs.fit_job` for vebi's relevant features.
* :mod:`~napari_attribution.runs.model_info` — demo models, model files, recent models, and what a dock needs to
  know about a loaded model (:class:`~napari_attribution.runs.model_info.ModelInfo`).
* :mod:`~napari_attribution.runs.checks` — the checks of a heatmap (:func:`~napari_attribution.runs.checks.check_job`)
  and their verdicts in words (:func:`~napari_attribution.runs.checks.verdict`: the Explain dock and the CLI's CSVs).
* :mod:`~napari_attribution.runs.threads` — how many torch threads a job computes with, and giving the caller's
  setting back afterwards.

The docks in :mod:`napari_attribution._widget` import this package; it never imports them (the import-linter
contract in pyproject.toml).
"""
