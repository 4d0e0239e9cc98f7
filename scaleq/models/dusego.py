"""DuSEGO: dual second-order equivariant graph ODE (Wang et al.), any first-order backbone as F.

The system (paper Eq. 7) on coordinates X [N, D] and features H [N, H]:

    X'' = sigma(F_x(X, H)) - gamma1 X - alpha X'
    H'' = sigma(F_h(X, H)) - gamma2 H - alpha H'

where F = (F_h, F_x) is ONE layer of a first-order equivariant GNN (the coupling function; for
EGNN, Eq. 10: F_h = h^{l+1}, F_x = x^{l+1}, the layer's outputs). With Y = X' and U = H', the
IMEX / symplectic-Euler discretisation (Eq. 8 and 9), one step per layer, n = 1..L:

    Y_n = Y_{n-1} + dt [sigma(F_x(X_{n-1}, H_{n-1})) - gamma1 X_{n-1} - alpha Y_{n-1}]    (8)
    X_n = X_{n-1} + dt Y_n
    U_n = U_{n-1} + dt [sigma(F_h(X_{n-1}, H_{n-1})) - gamma2 H_{n-1} - alpha U_{n-1}]    (9)
    H_n = H_{n-1} + dt U_n

Choices the paper leaves open (each a constructor argument):

- Equivariance. ``gamma1 X`` on raw coordinates is not translation-equivariant (nor is sigma of a
  position), so every position in Eq. 8 is measured from the centre of mass c of its graph in
  the current state X_{n-1}: ``F_x - c`` and ``X_{n-1} - c``. That is Eq. 8 written with the
  origin at the centre of mass: both terms are translation-invariant and rotate with the input,
  so the acceleration is E(n)-equivariant, and with gamma1 = 1 and sigma = identity it is
  ``F_x - X`` (the backbone's coordinate update), the form of the paper's Proposition 1. The
  current (not the input's) centre of mass is used so that the damping pulls nodes towards
  their own centre and never drags the whole graph back to where it started.
- sigma. ``sigma`` acts elementwise on the invariant features. On coordinates an elementwise
  function would break rotation equivariance, so ``sigma_pos`` acts on the length of each
  vector: v -> v sigma(|v|) / |v| (identity, relu: v itself; tanh: length squashed below 1).
- Initial state. X_0 = pos, H_0 = Linear(h), U_0 = 0. Y_0 (``initial_velocity``): "horizon"
  (default) rescales the input velocity from physical time to the ODE's time span T = L dt,
  Y_0 = v * horizon / T, so that with no force the model starts at the Linear baseline
  x + v * horizon whatever L and dt are; "input" takes Y_0 = v; "zero" takes Y_0 = 0.
- The backbone's own velocity term (EGNN's phi_v(h) v^0) always sees the INPUT velocity, as in
  EGNN; the ODE velocity Y is a separate state.
- Periodic boxes. The backbone's differences are minimum images (EGNN reads ``edge_shift``); the
  centre c cancels from Eq. 8 only with a linear sigma_pos and gamma1 = 1, and a periodic box has
  no centre to pull towards otherwise, so other settings are refused there
  (:meth:`DuSEGO.periodic_problem`).

Special case worth knowing: dt = alpha = gamma1 = gamma2 = 1 with identity sigma and sigma_pos
gives X_n = F_x(X_{n-1}, H_{n-1}) and H_n = F_h(X_{n-1}, H_{n-1}): plain EGNN, exactly (tested).

Solvers: ``"imex"`` is the loop above. ``"odeint"`` integrates the same first-order system
(X, H, Y, U)' = (Y, U, a_X, a_H) with torchdiffeq over each layer's interval [t_{n-1}, t_n]
(``method``: a fixed-grid method, ``substeps`` steps per interval); ``method="symplectic_euler"``
with one substep is the IMEX scheme again. ``"odeint_adjoint"`` is the same with the adjoint
method (memory independent of the number of substeps; gradient of the continuous system).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from scaleq.models.egnn import EGNNLayer
from scaleq.nn.block_options import EdgeChunk, Kernel, check_block_options
from scaleq.nn.graph_reduce import graph_mean
from scaleq.nn.layer_recompute import run_layers
from scaleq.nn.message_passing import EdgeLayout, Halo
from scaleq.nn.ode import FIXED_GRID_METHODS, integrate_interval
from scaleq.nn.periodic import periodic_box

Activation = Literal["identity", "tanh", "relu", "silu"]
State = tuple[Tensor, Tensor, Tensor, Tensor]  # (X [N, D], H [N, H], Y [N, D], U [N, H])


# -- the coupling-function interface ------------------------------------------------------------


@dataclass(frozen=True)
class GraphInputs:
    """What a coupling layer may read besides (h, pos): fixed for the whole integration.

    Shapes: vel [N, D] input velocity, edge_index [2, E] (j -> i), edge_attr [E, Fe], batch [N]
    graph id of each node (num_graphs B of them). ``layout``: the same edges sorted by receiver
    (built once per forward for the message-passing block); ``halo``: graph parallelism's halo.
    """

    vel: Tensor
    edge_index: Tensor
    edge_attr: Tensor
    batch: Tensor
    num_graphs: int
    layout: EdgeLayout | None = None
    halo: Halo | None = None


class CouplingLayer(Protocol):
    """One layer of a first-order equivariant GNN: (h, pos, graph) -> (h', pos').

    h' must be invariant and pos' a position (pos' - pos translation-invariant, rotating with
    the input) for DuSEGO to stay E(n)-equivariant.
    """

    def __call__(self, h: Tensor, pos: Tensor, graph: GraphInputs) -> tuple[Tensor, Tensor]: ...


class EGNNCoupling(nn.Module):
    """EGNN's layer (Eq. 10 of the DuSEGO paper, velocity variant) as a coupling function."""

    def __init__(
        self, hidden: int, edge_dim: int, *, velocity: bool = True, edge_chunk: EdgeChunk = 0, kernel: Kernel = "auto"
    ) -> None:
        super().__init__()
        self.layer = EGNNLayer(hidden, edge_dim, velocity=velocity, edge_chunk=edge_chunk, kernel=kernel)

    def forward(self, h: Tensor, pos: Tensor, graph: GraphInputs) -> tuple[Tensor, Tensor]:
        """
        Shapes:
            h: [N, H], pos: [N, D] -> (h' [N, H], pos' [N, D])
        """
        return self.layer(h, pos, graph.vel, graph.edge_index, graph.edge_attr, layout=graph.layout, halo=graph.halo)


# name -> factory(hidden, edge_dim, velocity=..., edge_chunk=..., kernel=...) returning a CouplingLayer module
COUPLINGS: dict[str, Callable[..., nn.Module]] = {"egnn": EGNNCoupling}


# -- activations ----------------------------------------------------------------------------------

_ELEMENTWISE: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda v: v,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "silu": nn.functional.silu,
}


def vector_activation(v: Tensor, name: Activation) -> Tensor:
    """sigma on vectors, equivariantly: v -> v sigma(|v|) / |v|, row by row.

    Shapes: v [N, D] -> [N, D]
    """
    if name in ("identity", "relu"):  # sigma(r) = r for r >= 0
        return v
    length = v.pow(2).sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny).sqrt()
    if name == "tanh":  # tanh(r) / r, with its limit 1 at r -> 0
        gain = torch.where(length > 1e-4, torch.tanh(length) / length, 1 - length.pow(2) / 3)
    else:  # silu(r) / r = sigmoid(r)
        gain = torch.sigmoid(length)
    return v * gain


# -- the model ------------------------------------------------------------------------------------


class DuSEGO(nn.Module):
    """Second-order ODE on coordinates and features around a first-order equivariant backbone.

    Args:
        in_node_features: width of ``batch.h``. in_edge_features: width of ``batch.edge_attr``.
        backbone: coupling function F, a key of ``COUPLINGS`` ("egnn").
        hidden: H. layers: L (integration steps, one backbone evaluation each).
        velocity: the backbone's velocity term (EGNN: phi_v(h) v^0).
        dt: time step (Eq. 8-9). The ODE runs for T = L dt; Proposition 2's gradient bound grows
            with N dt, and at H = 64 on the 5-body data 64 layers diverge at dt = 0.5 but train at
            0.25 and 0.125: keep L dt moderate (about 16 or less) for deep stacks.
        alpha: velocity damping. gamma1, gamma2: restoring strength on coordinates (relative to
            the centre of mass) and on features.
        sigma: activation on the features' forcing term; sigma_pos: on the coordinates' (applied
            to vector lengths, see :func:`vector_activation`).
        shared_weights: one backbone layer for all steps (autonomous F) or one per step.
        initial_velocity: Y_0, see the module docstring ("horizon", "input", "zero").
        solver: "imex" (Eq. 8-9), "odeint" or "odeint_adjoint" (torchdiffeq).
        method, substeps, adjoint_method: torchdiffeq fixed-grid method, steps per layer
            interval, and the method of the adjoint solve (only for the odeint solvers).
        gradient_checkpointing: checkpoint every k steps (0: off).
        edge_chunk, kernel: options of the backbone's message-passing block (see EGNN).
    """

    # what scaleq.models.build checks a config against before a run starts
    auxiliary_outputs: ClassVar[tuple[str, ...]] = ("h", "vel")
    # sigma_pos values that leave vectors as they are (relu(r) = r for lengths r >= 0)
    LINEAR_SIGMA_POS: ClassVar[tuple[str, ...]] = ("identity", "relu")

    @classmethod
    def periodic_problem(cls, options: dict[str, object]) -> str | None:
        """Why DuSEGO with these options refuses periodic boxes, or None.

        Eq. 8's restoring term -gamma1 (X - c) pulls every particle towards its graph's centre of
        mass c: a harmonic trap. A periodic box has no centre (a homogeneous fluid is the same
        seen from every point) and no continuous periodic trap (the minimum image of x - c flips
        direction half a box away from c). With sigma_pos linear (identity, relu) and gamma1 = 1
        the centre cancels: X'' = (F_x - c) - (X - c) - alpha Y = F_x - X - alpha Y, the
        backbone's own (minimum-image) update, so those settings honour the box exactly."""
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        sigma_pos, gamma1 = options.get("sigma_pos", defaults["sigma_pos"]), options.get("gamma1", defaults["gamma1"])
        if sigma_pos in cls.LINEAR_SIGMA_POS and gamma1 == 1:
            return None
        return (f"with sigma_pos={sigma_pos!r} and gamma1={gamma1} its restoring term gamma1 (x - centre of mass) "
                "does not cancel, and a periodic box has no centre to pull towards; set model.sigma_pos to "
                "'identity' and model.gamma1 to 1, or graph.periodic to false")

    def __init__(
        self,
        *,
        in_node_features: int,
        in_edge_features: int,
        backbone: str = "egnn",
        hidden: int = 64,
        layers: int = 4,
        velocity: bool = True,
        dt: float = 0.25,
        alpha: float = 1.0,
        gamma1: float = 1.0,
        gamma2: float = 1.0,
        sigma: Activation = "tanh",
        sigma_pos: Activation = "identity",
        shared_weights: bool = False,
        initial_velocity: Literal["horizon", "input", "zero"] = "horizon",
        solver: Literal["imex", "odeint", "odeint_adjoint"] = "imex",
        method: str = "symplectic_euler",
        substeps: int = 1,
        adjoint_method: str = "rk4",
        gradient_checkpointing: int = 0,
        edge_chunk: EdgeChunk = 0,
        kernel: Kernel = "auto",
    ) -> None:
        super().__init__()
        if backbone not in COUPLINGS:
            raise ValueError(f"DuSEGO backbone must be one of {sorted(COUPLINGS)}, got {backbone!r}")
        if hidden < 1 or layers < 1:
            raise ValueError(f"DuSEGO needs hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}")
        if dt <= 0:
            raise ValueError(f"DuSEGO needs dt > 0, got {dt}")
        for name, value in (("sigma", sigma), ("sigma_pos", sigma_pos)):
            if value not in _ELEMENTWISE:
                raise ValueError(f"DuSEGO {name} must be one of {sorted(_ELEMENTWISE)}, got {value!r}")
        if initial_velocity not in ("horizon", "input", "zero"):
            raise ValueError(f"DuSEGO initial_velocity must be 'horizon', 'input' or 'zero', got {initial_velocity!r}")
        if solver not in ("imex", "odeint", "odeint_adjoint"):
            raise ValueError(f"DuSEGO solver must be 'imex', 'odeint' or 'odeint_adjoint', got {solver!r}")
        if solver != "imex" and method not in FIXED_GRID_METHODS:
            raise ValueError(f"DuSEGO method must be one of {list(FIXED_GRID_METHODS)}, got {method!r}")
        if substeps < 1:
            raise ValueError(f"DuSEGO substeps must be >= 1, got {substeps}")
        check_block_options(edge_chunk, kernel)
        self.embed = nn.Linear(in_node_features, hidden)
        make = COUPLINGS[backbone]
        self.layers = nn.ModuleList(
            make(hidden, in_edge_features, velocity=velocity, edge_chunk=edge_chunk, kernel=kernel)
            for _ in range(1 if shared_weights else layers)
        )
        self.num_steps = layers
        self.dt, self.alpha, self.gamma1, self.gamma2 = dt, alpha, gamma1, gamma2
        self.sigma, self.sigma_pos = sigma, sigma_pos
        self.initial_velocity = initial_velocity
        self.solver, self.method, self.substeps, self.adjoint_method = solver, method, substeps, adjoint_method
        self.gradient_checkpointing = gradient_checkpointing

    # -- the equations ----------------------------------------------------------------------------

    def acceleration(self, layer: nn.Module, state: State, graph: GraphInputs) -> tuple[Tensor, Tensor]:
        """Right-hand sides of Eq. 7 at one state: (X'', H'').

        Shapes:
            state: (X [N, D], H [N, H], Y [N, D], U [N, H]) -> (X'' [N, D], H'' [N, H])
        """
        x, h, y, u = state
        h_new, x_new = layer(h, x, graph)  # F(X_{n-1}, H_{n-1})
        centre = graph_mean(x, graph.batch, graph.num_graphs, graph.halo).index_select(0, graph.batch)  # [N, D], all ranks' nodes
        acc_x = vector_activation(x_new - centre, self.sigma_pos) - self.gamma1 * (x - centre) - self.alpha * y
        acc_h = _ELEMENTWISE[self.sigma](h_new.to(h.dtype)) - self.gamma2 * h - self.alpha * u
        return acc_x, acc_h

    def imex_step(self, layer: nn.Module, x: Tensor, h: Tensor, y: Tensor, u: Tensor, *, graph: GraphInputs) -> State:
        """One step of Eq. 8 and 9: velocities from the old state, then positions from the new velocities."""
        acc_x, acc_h = self.acceleration(layer, (x, h, y, u), graph)
        y = y + self.dt * acc_x
        u = u + self.dt * acc_h
        return x + self.dt * y, h + self.dt * u, y, u

    def ode_step(self, layer: nn.Module, x: Tensor, h: Tensor, y: Tensor, u: Tensor, *, graph: GraphInputs, n: int) -> State:
        """The system over [t_{n-1}, t_n] = [(n-1) dt, n dt] with torchdiffeq."""

        def field(_t: Tensor, state: State) -> State:
            acc_x, acc_h = self.acceleration(layer, state, graph)
            return state[2], state[3], acc_x, acc_h

        out = integrate_interval(
            field, (x, h, y, u), (n - 1) * self.dt, n * self.dt, method=self.method, substeps=self.substeps,
            adjoint=self.solver == "odeint_adjoint", adjoint_method=self.adjoint_method, params=list(layer.parameters()),
        )
        return out[0], out[1], out[2], out[3]

    # -- running it -------------------------------------------------------------------------------

    def _velocity_scale(self, batch: Batch, node_batch: Tensor, dtype: torch.dtype) -> Tensor | float:
        if self.initial_velocity != "horizon":
            return 1.0
        horizon = getattr(batch, "horizon", None)
        if horizon is None:
            raise ValueError("DuSEGO initial_velocity='horizon' needs batch.horizon [B]; use 'input' or 'zero' otherwise")
        return (horizon.to(dtype).index_select(0, node_batch) / (self.num_steps * self.dt)).unsqueeze(-1)  # [N, 1]

    def _setup(self, batch: Batch) -> tuple[State, list[Callable[..., State]], Tensor | float]:
        pos = batch.pos
        if periodic_box(batch) is not None:
            problem = self.periodic_problem({"sigma_pos": self.sigma_pos, "gamma1": self.gamma1})
            if problem is not None:
                raise ValueError(f"DuSEGO on a periodic box: {problem}")
        node_batch = getattr(batch, "batch", None)
        if node_batch is None:  # a single graph
            node_batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        num_graphs = int(getattr(batch, "num_graphs", 1))  # known on the host: no device sync
        graph = GraphInputs(
            batch.vel, batch.edge_index, batch.edge_attr, node_batch, num_graphs,
            layout=EdgeLayout.from_batch(batch, pos.shape[0]), halo=getattr(batch, "halo", None),
        )
        scale = self._velocity_scale(batch, node_batch, pos.dtype)
        h = self.embed(batch.h).to(pos.dtype)  # the states keep coordinate precision
        y = torch.zeros_like(pos) if self.initial_velocity == "zero" else batch.vel.to(pos.dtype) * scale
        state = (pos, h, y, torch.zeros_like(h))
        steps = []
        for n in range(1, self.num_steps + 1):
            layer = self.layers[0 if len(self.layers) == 1 else n - 1]
            if self.solver == "imex":
                steps.append(functools.partial(self.imex_step, layer, graph=graph))
            else:
                steps.append(functools.partial(self.ode_step, layer, graph=graph, n=n))
        return state, steps, scale

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """
        Shapes:
            batch.h: [N, F], batch.pos: [N, D], batch.vel: [N, D], batch.edge_index: [2, E],
            batch.edge_attr: [E, Fe], batch.batch: [N], batch.horizon: [B]
            -> {"pos": X_L [N, D], "h": H_L [N, H], "vel": Y_L in the input velocity's units [N, D]}
        """
        state, steps, scale = self._setup(batch)
        x, h, y, _ = run_layers(steps, state, self.gradient_checkpointing)
        return {"pos": x, "h": h, "vel": y / scale}

    def trajectory(self, batch: Batch) -> list[State]:
        """All states (X_n, H_n, Y_n, U_n), n = 0..L, for diagnostics (no checkpointing)."""
        state, steps, _ = self._setup(batch)
        states = [state]
        for step in steps:
            states.append(step(*states[-1]))
        return states
