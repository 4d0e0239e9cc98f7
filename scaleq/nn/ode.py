"""Fixed-grid integration of second-order systems with torchdiffeq.

A second-order system q'' = a(q, q') is integrated in first-order form: the state is the tuple
``(q_1, ..., q_k, p_1, ..., p_k)`` with ``p_i = q_i'`` and ``p_i.shape == q_i.shape``, and the
vector field returns ``(p_1, ..., p_k, a_1, ..., a_k)``. torchdiffeq flattens such a tuple into
one vector in order, so positions fill its first half and velocities its second half.

``symplectic_euler`` is the IMEX step of GraphCON and DuSEGO (Eq. 6, 8, 9 of the DuSEGO paper):

    p_n = p_{n-1} + dt a(q_{n-1}, p_{n-1})
    q_n = q_{n-1} + dt p_n

torchdiffeq has no such solver (GraphCON's GRAND-based variant brings its own too), so
:func:`register_symplectic_euler` adds one to torchdiffeq's solver table
(``torchdiffeq._impl.odeint.SOLVERS``, where ``odeint`` and ``odeint_adjoint`` look methods up;
a private module, unchanged since torchdiffeq 0.2.0). Every other fixed-grid method of
torchdiffeq (``euler``, ``midpoint``, ``rk4``, ...) works on the same first-order system.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchdiffeq
from torch import Tensor
from torchdiffeq._impl.misc import Perturb
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.solvers import FixedGridODESolver

SYMPLECTIC_EULER = "symplectic_euler"
FIXED_GRID_METHODS = ("symplectic_euler", "euler", "midpoint", "heun2", "heun3", "rk4")

State = tuple[Tensor, ...]
VectorField = Callable[[Tensor, State], State]


class SymplecticEuler(FixedGridODESolver):
    """Semi-implicit (symplectic) Euler for a flat state [q, p] with dq/dt = p.

    One evaluation of the vector field per step: velocities first from the old state, then
    positions from the NEW velocities.
    """

    order = 1

    def _step_func(self, func: Callable[..., Tensor], t0: Tensor, dt: Tensor, t1: Tensor, y0: Tensor) -> tuple[Tensor, Tensor]:
        f0 = func(t0, y0, perturb=Perturb.NEXT if self.perturb else Perturb.NONE)
        half = y0.shape[0] // 2
        if y0.dim() != 1 or 2 * half != y0.shape[0]:
            raise ValueError(f"symplectic_euler needs a flat state [q, p] of even length, got shape {tuple(y0.shape)}")
        dp = dt * f0[half:]  # p_n - p_{n-1} = dt a(q_{n-1}, p_{n-1})
        dq = dt * (y0[half:] + dp)  # q_n - q_{n-1} = dt p_n
        return torch.cat([dq, dp]), f0


def register_symplectic_euler() -> None:
    """Make ``method="symplectic_euler"`` available to torchdiffeq (idempotent)."""
    SOLVERS.setdefault(SYMPLECTIC_EULER, SymplecticEuler)


def _uniform_grid(steps: int) -> Callable[[object, Tensor, Tensor], Tensor]:
    """Exactly ``steps`` equal steps between t[0] and t[-1] (torchdiffeq's ``step_size`` rounds
    the count with ceil, which can add a tiny extra step). Built from the ``t`` it is given, so
    it also serves the adjoint solve, which runs on reversed, negated times."""

    def grid(_func: object, _y0: Tensor, t: Tensor) -> Tensor:
        fraction = torch.arange(steps + 1, dtype=t.dtype, device=t.device) / steps
        out = t[0] + (t[-1] - t[0]) * fraction
        out[-1] = t[-1]
        return out

    return grid


def integrate_interval(
    field: VectorField,
    state: State,
    t0: float,
    t1: float,
    *,
    method: str,
    substeps: int = 1,
    adjoint: bool = False,
    adjoint_method: str = "rk4",
    params: Sequence[Tensor] = (),
) -> State:
    """Integrate ``dy/dt = field(t, y)`` from t0 to t1 on ``substeps`` equal steps; return y(t1).

    With ``adjoint`` the solve goes through ``torchdiffeq.odeint_adjoint``: no activations are
    kept for backward, the gradient comes from solving the adjoint system backwards in time with
    ``adjoint_method`` on the same grid (it is the gradient of the continuous ODE, so it differs
    from the gradient of the discrete forward solve by the discretisation error). ``params`` are
    the tensors the field depends on that need gradients (required by the adjoint).

    Shapes:
        state: tuple of tensors (any shapes) -> tuple of the same shapes
    """
    if method not in FIXED_GRID_METHODS:
        raise ValueError(f"method must be one of {list(FIXED_GRID_METHODS)} (fixed-grid), got {method!r}")
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    register_symplectic_euler()
    reference = state[0]
    t = torch.tensor([t0, t1], dtype=reference.dtype, device=reference.device)
    options = {"grid_constructor": _uniform_grid(substeps)}
    if adjoint:
        if adjoint_method == SYMPLECTIC_EULER:
            raise ValueError("the adjoint system is not of the form [q, p]: pick another adjoint_method (e.g. rk4)")
        solution = torchdiffeq.odeint_adjoint(
            field, state, t, method=method, options=options, adjoint_method=adjoint_method,
            adjoint_options=dict(options), adjoint_params=tuple(params),
        )
    else:
        solution = torchdiffeq.odeint(field, state, t, method=method, options=options)
    return tuple(y[-1] for y in solution)
