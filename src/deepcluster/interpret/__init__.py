"""Inter-model interpretation: dissect units against concepts, Dissect profiles and the Learned
Concepts Embedding, CKA between layers, pairwise ensembles (AUB thesis ch. 3).

``deepcluster.interpret.dissect`` is the dissection module; its function of the same name is
not re-exported here (it would hide the module): ``from deepcluster.interpret.dissect import
dissect``, or :func:`dissect_many` for one model as for several.
"""

from deepcluster.interpret.broden import (
    BrodenDataset,
    BrodenWriter,
    decode_mask,
    encode_mask,
)
from deepcluster.interpret.cka import cka_matrix, layer_similarity, linear_cka
from deepcluster.interpret.concepts import make_concept_probe
from deepcluster.interpret.dissect import DissectOptions, DissectResult, DissectTarget, dissect_many
from deepcluster.interpret.dissect_report import write_dissection
from deepcluster.interpret.ensemble import (
    ensemble_weights,
    pairwise_ensembles,
    probe_probabilities,
)
from deepcluster.interpret.lce import build_profiles, learned_concepts_embedding
from deepcluster.interpret.model_source import (
    ModelInfo,
    load_model_source,
    resolve_layer,
)
from deepcluster.interpret.tally import read_tally

__all__ = [
    "BrodenDataset", "BrodenWriter", "DissectOptions", "DissectResult", "DissectTarget", "ModelInfo", "build_profiles",
    "cka_matrix", "decode_mask", "dissect_many", "encode_mask", "ensemble_weights", "layer_similarity",
    "learned_concepts_embedding", "linear_cka", "load_model_source", "make_concept_probe", "pairwise_ensembles",
    "probe_probabilities", "read_tally", "resolve_layer", "write_dissection",
]
