"""Models by name. A plain dict: adding a model is one import and one line."""

from torch import nn

from scaleq.models.baselines import ConstantVelocity, LinearDynamics
from scaleq.models.dusego import DuSEGO
from scaleq.models.eghn import EGHN
from scaleq.models.egnn import EGNN
from scaleq.models.fastegnn import FastEGNN

MODELS: dict[str, type[nn.Module]] = {
    "egnn": EGNN,
    "fastegnn": FastEGNN,
    "eghn": EGHN,
    "dusego": DuSEGO,
    "linear": LinearDynamics,
    "constant_velocity": ConstantVelocity,
}
