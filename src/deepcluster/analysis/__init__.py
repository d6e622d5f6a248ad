"""Analysis over many networks or many runs: Initial Alignment and hyperparameter studies.

It sits above training and evaluation (it builds networks, trains and evaluates runs) and below
the report, interpretation and command-line layers. The package imports nothing on its own:
import the module you need.

Initial Alignment (``deepcluster ia``; Deep Dive into DeepCluster, §4.1):

- :mod:`~deepcluster.analysis.alignment`: IA of a setting over many random initialisations
  (:func:`initial_alignment`), the labels it is measured on, the recommended setting, and
  ``init=best_ia:N`` resolved before training (:func:`resolve_init`).
- :mod:`~deepcluster.analysis.stacked`: the features of many random networks of one
  architecture in a single pass over the data.
- :mod:`~deepcluster.analysis.ia_grid`: IA over a grid of settings (``--set k=5,10,20``).
- :mod:`~deepcluster.analysis.ia_report`: its outputs: samples, per-setting summary, seed
  ranking, recommendation and figures.

Hyperparameter studies (``deepcluster study``; docs/studies.md):

- :mod:`~deepcluster.analysis.study_spec`: the study YAML and the trials it expands to.
- :mod:`~deepcluster.analysis.study`: :func:`run_study`, the workers that train and evaluate the
  trials, coordinated through an optuna storage.
- :mod:`~deepcluster.analysis.study_summary`: per-setting medians and IQRs of a study folder,
  as CSV and Markdown.
- :mod:`~deepcluster.analysis.study_plots`: the study's figures.
"""
