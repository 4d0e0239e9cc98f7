"""Models by name. A plain dict: adding a model is one import and one line."""

from torch import nn

from scaleq.models.baselines import LinearDynamics
from scaleq.models.eghn import EGHN
from scaleq.models.egnn import EGNN
from scaleq.models.fastegnn import FastEGNN

MODELS: dict[str, type[nn.Module]] = {
    "egnn": EGNN,
    "fastegnn": FastEGNN,
    "eghn": EGHN,
    "linear": LinearDynamics,
}

__all__ = ["MODELS", "EGNN", "FastEGNN", "EGHN", "LinearDynamics"]
