"""The papers' tables that ``launch/reproduce.py`` reproduces: their rows, the published figures,
the configs that train each row and the datasets they need, at two protocols.

A :class:`Table` has rows (one trained model each, or the Linear baseline every run fits) and
profiles: 'paper' is the published protocol; 'cpu' cuts the data and the epochs so the table
finishes on a few CPU cores, and says what it cut (``Profile.note``). Figures are in the paper's
unit (``Table.scale``: the paper's "x 1e-2" means the figure is MSE / 1e-2); NaN is a figure the
paper reports as NaN (a diverged run); None is a figure the paper does not give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

NAN = math.nan


@dataclass(frozen=True)
class Row:
    """One row: ``config`` (under configs/papers/) with ``overrides`` trains it; ``linear_of`` names
    the row whose runs' fitted Linear baseline this row reports (no training of its own)."""

    key: str
    label: str
    paper: float | None
    paper_std: float | None = None
    config: str | None = None
    overrides: tuple[str, ...] = ()
    dataset: str = "main"
    group: str = ""  # the paper's column (horizon, system size, depth)
    linear_of: str | None = None


@dataclass(frozen=True)
class Dataset:
    """How to make a dataset: ``kind`` 'nbody' (``args``: protocol and split sizes), 'mcomplex'
    (complexes, size, systems and split sizes) or 'md' (topology and trajectory, or
    ``mdanalysistests: true`` for the AdK files that MDAnalysisTests ships)."""

    kind: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Profile:
    note: str
    datasets: dict[str, Dataset]
    overrides: tuple[str, ...] = ()  # applied to every row, before the row's own
    rows: tuple[str, ...] | None = None  # the rows this profile trains (None: all)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    source: str
    scale: float
    unit: str
    rows: tuple[Row, ...]
    profiles: dict[str, Profile]
    plot: bool = False  # a trend is the result: also plot MSE against the row groups
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(f"table {self.name!r} has no row {key!r}; rows: {[r.key for r in self.rows]}")


def _nbody(protocol: str, train: int, valid: int, test: int, drawn: int | None = None, **extra: Any) -> Dataset:
    return Dataset("nbody", {"protocol": protocol, "train": train, "train_drawn": drawn, "valid": valid,
                             "test": test, **extra})


def _mcomplex(m: int, size: int, systems: int, train: int, valid: int, test: int) -> Dataset:
    return Dataset("mcomplex", {"complexes": m, "size": size, "systems": systems, "train": train, "valid": valid,
                                "test": test})


EGNN_NBODY = Table(
    name="egnn-nbody",
    title="EGNN, N-body (5 charged particles), test MSE",
    source="Satorras et al. 2021, Table 2 (EGNN 0.0071, Linear 0.0819)",
    scale=1.0,
    unit="MSE",
    rows=(
        Row("linear", "Linear", 0.0819, linear_of="egnn"),
        Row("egnn", "EGNN", 0.0071, config="configs/papers/egnn_nbody.yaml"),
    ),
    profiles={
        "paper": Profile("published protocol: 3000/2000/2000, up to 10000 epochs, patience 100",
                         {"main": _nbody("egnn", 3000, 2000, 2000, drawn=10000)}),
        "cpu": Profile("published data, 100 epochs (the README's CPU run length)",
                       {"main": _nbody("egnn", 3000, 2000, 2000, drawn=10000)}, ("train.epochs=100",)),
    },
)

_FAST = "configs/papers/fastegnn_nbody100.yaml"
FASTEGNN_T1_NBODY = Table(
    name="fastegnn-t1-nbody",
    title="FastEGNN, Table 1, N-body (100 particles), test MSE x 1e-2",
    source="Zhang et al. 2024 (ICML), Table 1",
    scale=1e-2,
    unit="MSE x 1e-2",
    rows=(
        Row("linear", "Linear", 12.66, linear_of="egnn"),
        Row("egnn", "EGNN", 1.41, config="configs/papers/egnn_nbody100.yaml"),
        Row("egnn-star", "EGNN* (all edges dropped)", 11.62, config="configs/papers/egnn_nbody100.yaml",
            overrides=("graph.edge_drop=1.0",)),
        Row("fastegnn-3-0", "FastEGNN-<3, 0.00>", 1.12, 0.04, config=_FAST, overrides=("graph.edge_drop=0.0",)),
        Row("fastegnn-3-075", "FastEGNN-<3, 0.75>", 1.10, 0.10, config=_FAST, overrides=("graph.edge_drop=0.75",)),
        Row("fastegnn-3-1", "FastEGNN-<3, 1.00>", 9.52, 0.02, config=_FAST, overrides=("graph.edge_drop=1.0",)),
    ),
    profiles={
        "paper": Profile("published protocol: 5000/2000/2000, up to 10000 epochs, patience 100",
                         {"main": _nbody("fastegnn", 5000, 2000, 2000)}),
        "cpu": Profile("100/50/50 trajectories (the first of the same seed-43 stream), simulated to step 4001 "
                       "(frame 40, the target), 20 epochs, batch 25",
                       {"main": _nbody("fastegnn", 100, 50, 50, steps=4001)},
                       ("train.epochs=20", "data.batch_size=25", "train.patience=20"),
                       rows=("linear", "egnn", "fastegnn-3-0", "fastegnn-3-075")),
    },
    extra={"relative_time_of": "egnn", "paper_relative_time": {"linear": 0.01, "egnn": 1.00, "egnn-star": 0.03,
                                                              "fastegnn-3-0": 1.07, "fastegnn-3-075": 0.35,
                                                              "fastegnn-3-1": 0.15}},
)

_FASTP = "configs/papers/fastegnn_protein.yaml"
FASTEGNN_T1_PROTEIN = Table(
    name="fastegnn-t1-protein",
    title="FastEGNN, Table 1, protein MD (AdK backbone), test MSE",
    source="Zhang et al. 2024 (ICML), Table 1",
    scale=1.0,
    unit="MSE (Angstrom^2)",
    rows=(
        Row("linear", "Linear", 2.26, linear_of="egnn"),
        Row("egnn", "EGNN", 2.25, config="configs/papers/egnn_protein.yaml"),
        Row("fastegnn-3-0", "FastEGNN-<3, 0.00>", 1.82, 0.02, config=_FASTP, overrides=("graph.edge_drop=0.0",)),
        Row("fastegnn-3-075", "FastEGNN-<3, 0.75>", 1.88, 0.01, config=_FASTP, overrides=("graph.edge_drop=0.75",)),
    ),
    profiles={
        "paper": Profile("published data (MDAnalysisData adk_equilibrium, 4187 frames: give --topology and "
                         "--trajectory), up to 10000 epochs",
                         {"main": Dataset("md", {"topology": None, "trajectory": None})}),
        "cpu": Profile("another AdK trajectory: MDAnalysisTests' adk.psf + adk_dims.dcd (98 frames of a "
                       "closed-to-open transition, not the paper's 4187-frame equilibrium run), 30 epochs, "
                       "batch 4 (its 44 training samples give 11 steps an epoch, where batch 50 gives one)",
                       {"main": Dataset("md", {"mdanalysistests": True})},
                       ("train.epochs=30", "train.patience=30", "data.batch_size=4", "data.num_workers=0")),
    },
)

_DUSEGO = "configs/papers/dusego_nbody.yaml"
_EGNN_D = "configs/papers/egnn_nbody_dusego.yaml"
DUSEGO_T1 = Table(
    name="dusego-t1",
    title="DuSEGO, Table 1, N-body (5 charged particles) at 1000 / 1500 / 2000 steps ahead, test MSE x 1e-2",
    source="Wang et al., DuSEGO, Table 1",
    scale=1e-2,
    unit="MSE x 1e-2",
    rows=tuple(
        r
        for steps, delta, figs in ((1000, 10, (6.831, 0.716, 0.674)), (1500, 15, (20.012, 2.201, 1.912)),
                                   (2000, 20, (39.513, 4.049, 3.876)))
        for r in (
            Row(f"linear-{steps}", "Linear", figs[0], linear_of=f"egnn-{steps}", group=f"{steps} steps"),
            Row(f"egnn-{steps}", "EGNN", figs[1], config=_EGNN_D, overrides=(f"data.delta={delta}",),
                group=f"{steps} steps"),
            Row(f"dusego-{steps}", "DuSEGO-EGNN", figs[2], config=_DUSEGO, overrides=(f"data.delta={delta}",),
                group=f"{steps} steps"),
        )
    ),
    profiles={
        "paper": Profile("DuSEGO's protocol as its paper states it: 10000/2000/2000, positions N(0, 0.5^2), "
                         "up to 10000 epochs",
                         {"main": _nbody("dusego", 10000, 2000, 2000)}),
        "cpu": Profile("1000/500/500 trajectories, 60 epochs",
                       {"main": _nbody("dusego", 1000, 500, 500)}, ("train.epochs=60", "train.patience=60")),
    },
)

DUSEGO_T2 = Table(
    name="dusego-t2",
    title="DuSEGO, Table 2, depth: test MSE x 1e-3 at 1000 steps ahead",
    source="Wang et al., DuSEGO, Table 2",
    scale=1e-3,
    unit="MSE x 1e-3",
    rows=tuple(
        r
        for layers, egnn, dusego in ((4, 7.16, 6.74), (8, 6.82, 6.68), (12, NAN, 6.62), (16, NAN, 6.49))
        for r in (
            Row(f"egnn-l{layers}", "EGNN", egnn, config=_EGNN_D, overrides=(f"model.layers={layers}",),
                group=str(layers)),
            Row(f"dusego-l{layers}", "DuSEGO-EGNN", dusego, config=_DUSEGO, overrides=(f"model.layers={layers}",),
                group=str(layers)),
        )
    ),
    profiles={
        "paper": Profile("DuSEGO's protocol: 10000/2000/2000, positions N(0, 0.5^2), up to 10000 epochs",
                         {"main": _nbody("dusego", 10000, 2000, 2000)}),
        "cpu": Profile("1000/500/500 trajectories, 60 epochs",
                       {"main": _nbody("dusego", 1000, 500, 500)}, ("train.epochs=60", "train.patience=60")),
        "smoke": Profile("a check of the pipeline, not a result: 40/20/20 trajectories, 4 epochs, 4 and 8 layers",
                         {"main": _nbody("dusego", 40, 20, 20)},
                         ("train.epochs=4", "train.eval_every=1", "train.patience=4", "data.batch_size=20"),
                         rows=("egnn-l4", "dusego-l4", "egnn-l8", "dusego-l8")),
    },
    plot=True,
    extra={"group_name": "layers"},
)

_EGHN = "configs/papers/eghn_mcomplex.yaml"
_EGNN_M = "configs/papers/egnn_mcomplex.yaml"
_MCOMPLEX_FIGS = {  # (M, N/M): (Linear, EGNN, EGHN) single system, then multiple (J=5); mean, std
    (3, 3, 1): ((35.15, 0.01), (12.69, 0.19), (11.58, 0.01)),
    (5, 5, 1): ((35.22, 0.00), (15.37, 0.13), (14.42, 0.08)),
    (5, 10, 1): ((30.14, 0.00), (15.12, 0.11), (14.29, 0.40)),
    (10, 10, 1): ((31.44, 0.01), (14.64, 0.27), (13.09, 0.66)),
    (3, 3, 5): ((35.91, 0.01), (13.33, 0.12), (12.80, 0.56)),
    (5, 5, 5): ((35.29, 0.01), (15.48, 0.16), (14.85, 0.03)),
    (5, 10, 5): ((30.88, 0.01), (15.29, 0.12), (14.50, 0.08)),
    (10, 10, 5): ((32.49, 0.01), (15.02, 0.18), (13.11, 0.92)),
}


def _mcomplex_rows() -> tuple[Row, ...]:
    rows = []
    for (m, size, systems), (lin, egnn, eghn) in _MCOMPLEX_FIGS.items():
        tag = f"{m}-{size}-{systems}"
        group = f"({m}, {size}) {'single' if systems == 1 else 'multiple'}"
        rows += [
            Row(f"linear-{tag}", "Linear", lin[0], lin[1], linear_of=f"egnn-{tag}", dataset=tag, group=group),
            Row(f"egnn-{tag}", "EGNN", egnn[0], egnn[1], config=_EGNN_M, dataset=tag, group=group),
            Row(f"eghn-{tag}", "EGHN", eghn[0], eghn[1], config=_EGHN, overrides=(f"model.clusters={m}",),
                dataset=tag, group=group),
        ]
    return tuple(rows)


EGHN_T1 = Table(
    name="eghn-t1",
    title="EGHN, Table 1, M-complex systems, test MSE x 1e-2",
    source="Han et al. 2022 (NeurIPS), Table 1",
    scale=1e-2,
    unit="MSE x 1e-2",
    rows=_mcomplex_rows(),
    profiles={
        "paper": Profile("the published generator's protocol: 2000/2000/2000 trajectories per system, of which "
                         "training keeps 1000 (main_simulation.py's max_training_samples), up to 10000 epochs",
                         {f"{m}-{s}-{j}": _mcomplex(m, s, j, 2000, 2000, 2000) for m, s, j in _MCOMPLEX_FIGS}),
        "cpu": Profile("(3, 3) and (5, 5) single system only, 500/300/300 trajectories, 60 epochs",
                       {f"{m}-{s}-{j}": _mcomplex(m, s, j, 500, 300, 300) for m, s, j in ((3, 3, 1), (5, 5, 1))},
                       ("train.epochs=60", "train.patience=60"),
                       rows=tuple(f"{k}-{t}" for t in ("3-3-1", "5-5-1") for k in ("linear", "egnn", "eghn"))),
    },
)

TABLES: dict[str, Table] = {t.name: t for t in (EGNN_NBODY, FASTEGNN_T1_NBODY, FASTEGNN_T1_PROTEIN, DUSEGO_T1,
                                                DUSEGO_T2, EGHN_T1)}

__all__ = ["Row", "Dataset", "Profile", "Table", "TABLES"]
