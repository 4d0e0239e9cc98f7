import numpy as np
import pytest
from MDAnalysisTests.datafiles import DCD, PSF

from scaleq.data.dataset import SampleSpec, TrajectoryDataset
from scaleq.sources.md import convert_md
from scaleq.store.format import StoreError


@pytest.fixture(scope="module")
def adk_train(tmp_path_factory):
    return convert_md(PSF, DCD, tmp_path_factory.mktemp("adk"), stride=2)["train"]


def test_node_features_are_selected_by_name(adk_train):
    spec = SampleSpec(delta=5, velocity="forward")
    full = TrajectoryDataset(adk_train, spec)
    charge = TrajectoryDataset(adk_train, spec, node_features=["charge"])
    reordered = TrajectoryDataset(adk_train, spec, node_features=["type", "charge"])
    assert (full.num_node_features, charge.num_node_features, reordered.num_node_features) == (4, 2, 3)
    a, b, c = full[0], charge[0], reordered[0]
    np.testing.assert_array_equal(b.node_attr.numpy(), a.node_attr[:, :1].numpy())
    np.testing.assert_array_equal(c.node_attr.numpy(), a.node_attr[:, [2, 0]].numpy())
    # h = [|v|, charge / max |charge|], the protein protocol's node features
    np.testing.assert_allclose(b.h[:, 1].numpy(), (a.node_attr[:, 0] / a.node_attr[:, 0].abs().max()).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(b.h[:, 0].numpy(), a.h[:, 0].numpy())


def test_unknown_node_feature_is_named(adk_train):
    with pytest.raises(StoreError, match=r"node features \['mass'\] asked for; the store has \['charge', 'element', 'type'\]"):
        TrajectoryDataset(adk_train, SampleSpec(delta=5), node_features=["mass"])
