"""Boosted models of a few hundred bytes whose headers declare what the libraries allocate by."""

from __future__ import annotations

import json
from typing import Any


def lightgbm_many_classes(num_class: int = 100_000_000) -> bytes:
    """A LightGBM text model of one two-leaf tree whose header declares ``num_class`` classes:
    LightGBM gives every row a probability per declared class (10^8 classes: 800 MB a row)."""
    return (
        "tree\nversion=v4\n"
        f"num_class={num_class}\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n"
        f"objective=multiclass num_class:{num_class}\nfeature_names=a b\n"
        "feature_infos=[0:1] [0:1]\n\n"
        "Tree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=0\nsplit_gain=1\nthreshold=0.5\n"
        "decision_type=2\nleft_child=-1\nright_child=-2\nleaf_value=-1 1\nleaf_weight=1 1\n"
        "leaf_count=1 1\ninternal_value=0\ninternal_weight=2\ninternal_count=2\nis_linear=0\n"
        "shrinkage=1\n\n\nend of trees\n"
    ).encode()


def xgboost_many_classes(model_json: bytes, num_class: int = 100_000_000) -> bytes:
    """A real XGBoost JSON model (``model_json``) with its class count raised in the header."""
    document: dict[str, Any] = json.loads(model_json)
    document["learner"]["learner_model_param"]["num_class"] = str(num_class)
    return json.dumps(document).encode()
