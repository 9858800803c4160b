"""The score job: typed Score rows for every unit of a finished harvest run, neuron-feature
comparison tables (UnitRelation rows), and each SAE's layer superposition.

Per unit (all sources): ``density`` (from UnitStats), ``top_token_concentration`` (the top
examples' max tokens), ``context_cluster_polysemanticity`` (MiniLM embeddings of a window around
the max token of the top and interval examples, less the mean embedding of random windows of the
corpus, split by 2-means weighted by activation; text models only).

Per SAE on ``mlp.hook_post`` whose neurons are also in the run: ``features_per_neuron`` on each
neuron (over the tokens of its interval and random examples on which it fires),
``neurons_per_feature`` on each feature (from the decoder), and relations both ways: activation
``correlation`` (Pearson over the run's corpus, from the running sums its harvest pass kept:
every ``corr_stride``-th valid token, see ``HarvestConfig``) and ``context_overlap`` (Jaccard of
the top example contexts). Only the top ``RELATED`` per unit are kept. The layer's superposition
(live distinct features per dimension) goes to the SAE's ``quality`` JSON: it describes the
layer, not a unit.

For a toy model's run (``workers/pipeline/toy.py``), ``features_per_neuron`` comes from the toy's
true dictionary: an example's per-token values are exactly each active feature's contribution.

Rows are replaced per source in one transaction, so running the job twice gives the same rows.
"""

from __future__ import annotations

from workers.pipeline.scores.common import (
    COMMON_WINDOWS,
    NAMES,
    RELATED,
    VERSION,
    WINDOW,
    ScoreInputError,
)
from workers.pipeline.scores.job import scores_compute
from workers.pipeline.scores.windows import common_windows, window_text

__all__ = ["COMMON_WINDOWS", "NAMES", "RELATED", "VERSION", "WINDOW", "ScoreInputError", "common_windows",
           "scores_compute", "window_text"]
