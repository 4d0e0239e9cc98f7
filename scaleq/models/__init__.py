"""The models, and the one way to build a run's model.

``MODELS`` (scaleq/models/registry.py) names them: a plain dict, adding a model is one import and
one line. ``build_model(config, dataset)`` (scaleq/models/build.py) is the one way to build a run's
model; ``check_buildable(config)`` checks a config's ``model`` section against these classes before
a run starts.
"""

from scaleq.models.baselines import ConstantVelocity, LinearDynamics
from scaleq.models.build import DataWidths, build_model, check_buildable, data_widths
from scaleq.models.dusego import DuSEGO
from scaleq.models.eghn import EGHN
from scaleq.models.egnn import EGNN
from scaleq.models.fastegnn import FastEGNN
from scaleq.models.registry import MODELS

__all__ = ["MODELS", "ConstantVelocity", "DataWidths", "build_model", "check_buildable", "data_widths", "DuSEGO", "EGNN",
           "EGHN", "FastEGNN", "LinearDynamics"]
