"""The fused Triton kernels of the message-passing block (scaleq/nn/triton_edges.py), under the
interpreter on the CPU: every output and every gradient against the plain torch path, the
precisions they run at, and (slow, compiled for an H100 without one) what their code is made of."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from scaleq.nn import triton_edges
from scaleq.nn.message_passing import EdgeLayout, edge_sums

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = 16
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                        reason="needs CUDA")])


def skip_unless_kernel_runs_on(device):
    if not triton_edges.usable_on(torch.device(device)):
        pytest.skip(f"the Triton kernels cannot run on {device} here (not installed, or interpreter mode does not match)")


def edge_mlps(edge_dim, dtype, seed=0):
    """phi_e and phi_x as the block runs them, phi_x's last Linear with a bias (as EGHN's) so that
    every parameter the kernels differentiate has a gradient to compare."""
    torch.manual_seed(seed)
    phi_e = nn.Sequential(nn.Linear(2 * HIDDEN + 1 + edge_dim, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, HIDDEN), nn.SiLU())
    phi_x = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.SiLU(), nn.Linear(HIDDEN, 1))
    nn.init.normal_(phi_x[2].weight, std=0.3)  # real coordinate updates
    return phi_e.to(dtype), phi_x.to(dtype)


def graph(n=100, e=700, edge_dim=3, dtype=torch.float64, seed=1):
    """Unsorted random edges over 7 blocks of 16 receivers (so the backward's 3 interpreted
    programs each walk several), a hub receiving 80 edges (3 tiles), receivers with no edge (one
    in the middle, the last five), periodic shifts."""
    generator = torch.Generator().manual_seed(seed)
    source = torch.randint(0, n, (e,), generator=generator)
    target = torch.randint(0, n - 5, (e,), generator=generator)
    target[target == 50] = 51
    target[torch.randperm(e, generator=generator)[:80]] = 3
    return {
        "edge_index": torch.stack([source, target]),
        "edge_attr": torch.randn(e, edge_dim, generator=generator, dtype=dtype),
        "edge_shift": torch.randint(-1, 2, (e, 3), generator=generator).to(dtype) * 2.5,
        "h": torch.randn(n, HIDDEN, generator=generator, dtype=dtype),
        "pos": torch.randn(n, 3, generator=generator, dtype=dtype),
    }


def run(phi_e, phi_x, g, device="cpu", int32=False, **options):
    """The sums and the gradients of a scalar of them w.r.t. h, pos, the edge attributes, the
    shifts and every parameter."""
    h, pos, attr, shift = (g[k].to(device).clone().requires_grad_() for k in ("h", "pos", "edge_attr", "edge_shift"))
    layout = EdgeLayout.build(g["edge_index"].to(device), pos.shape[0], attr, shift)
    if int32:
        layout = dataclasses.replace(layout, source=layout.source.int(), target=layout.target.int())
    sums = edge_sums(phi_e, phi_x, h, pos, layout, **options)
    weight = torch.linspace(-1, 1, sums.message_sum.numel(), dtype=pos.dtype, device=device)
    loss = (sums.message_sum * weight.view_as(sums.message_sum)).sum() + sums.coord_sum.pow(2).sum()
    inputs = [h, pos, attr, shift, *phi_e.parameters(), *phi_x.parameters()]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [sums.message_sum.detach(), sums.coord_sum.detach(), *grads]


NAMES = ["message_sum", "coord_sum", "h", "pos", "edge_attr", "edge_shift", "phi_e.0.weight", "phi_e.0.bias",
         "phi_e.2.weight", "phi_e.2.bias", "phi_x.0.weight", "phi_x.0.bias", "phi_x.2.weight", "phi_x.2.bias"]


def assert_same(got, expected, rtol, atol):
    assert len(got) == len(expected) == len(NAMES)
    for name, a, b in zip(NAMES, got, expected):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def relative_errors(got, expected):
    return {name: ((a.double() - b.double()).norm() / b.double().norm()).item()
            for name, a, b in zip(NAMES, got, expected) if b.abs().max() > 0}


@pytest.mark.parametrize("edge_dim", [3, 0], ids=["attr3", "no-attr"])
@pytest.mark.parametrize("int32", [False, True], ids=["int64", "int32"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_kernels_equal_the_torch_path_in_every_output_and_gradient(dtype, int32, edge_dim):
    skip_unless_kernel_runs_on("cpu")
    phi_e, phi_x = edge_mlps(edge_dim, dtype)
    g = graph(edge_dim=edge_dim, dtype=dtype)
    expected = run(phi_e, phi_x, g)
    got = run(phi_e, phi_x, g, int32=int32, kernel="triton")
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_same(got, expected, rtol=tol, atol=tol)
    assert expected[0][[50, 95, 99]].abs().max() == 0  # receivers without edges get nothing
    assert all(t.abs().max() > 0 for t in expected[2:] if t.numel())  # every gradient is exercised


def test_empty_graphs_give_zeros_and_zero_gradients():
    skip_unless_kernel_runs_on("cpu")
    phi_e, phi_x = edge_mlps(2, torch.float64)
    full = graph(edge_dim=2)
    no_edges = {**full, "edge_index": full["edge_index"][:, :0], "edge_attr": full["edge_attr"][:0],
                "edge_shift": full["edge_shift"][:0]}
    no_nodes = {**no_edges, "h": full["h"][:0], "pos": full["pos"][:0]}
    for g in (no_edges, no_nodes):
        got = run(phi_e, phi_x, g, kernel="triton")
        assert_same(got, run(phi_e, phi_x, g), rtol=0, atol=0)
        assert all(t is None or t.abs().sum() == 0 for t in got)


def test_precision_follows_torch_switches():
    cpu = torch.device("cpu")
    assert triton_edges.matmul_precision(torch.float32, cpu) == "ieee"  # torch's default for fp32 matmuls
    assert triton_edges.matmul_precision(torch.float64, cpu) == "ieee"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert triton_edges.matmul_precision(torch.float32, cpu) == "bf16"
        assert triton_edges.matmul_precision(torch.float64, cpu) == "ieee"
    with torch.autocast("cpu", dtype=torch.float16):
        assert triton_edges.matmul_precision(torch.float32, cpu) == "fp16"
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        assert triton_edges.matmul_precision(torch.float32, cpu) == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
    with pytest.raises(ValueError, match="precision must be one of"):
        triton_edges._dot_options("fp8", torch.float32)


# Tolerances of the tensor-core paths, as relative norms of each output and gradient against the
# fp32 torch path. TF32 keeps 10 mantissa bits of every weight product's operands, as torch's own
# TF32 matmuls do. bf16 keeps 7 (torch's own path under autocast, which also rounds activations,
# is at ~1e-2 here); compiled code rounds to nearest (~6e-3 here when the interpreter is made to),
# while Triton's interpreter rounds fp32 to bf16 toward zero, which biases every product the same
# way (~3.6e-2 here).
TF32_TOLERANCE = 5e-3
BF16_TOLERANCE = {"cuda": 2e-2, "cpu": 5e-2}


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_tf32_path_within_its_tolerance(device):
    skip_unless_kernel_runs_on(device)
    phi_e, phi_x = edge_mlps(3, torch.float32)
    phi_e, phi_x = phi_e.to(device), phi_x.to(device)
    g = graph(dtype=torch.float32)
    expected = run(phi_e, phi_x, g, device)
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        got = run(phi_e, phi_x, g, device, kernel="triton")
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
    errors = relative_errors(got, expected)
    assert max(errors.values()) < TF32_TOLERANCE, errors


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_bf16_autocast_path_within_its_tolerance(device):
    skip_unless_kernel_runs_on(device)
    phi_e, phi_x = edge_mlps(3, torch.float32)
    phi_e, phi_x = phi_e.to(device), phi_x.to(device)
    g = graph(dtype=torch.float32)
    expected = run(phi_e, phi_x, g, device)
    with torch.autocast(device, dtype=torch.bfloat16):
        got = run(phi_e, phi_x, g, device, kernel="triton")
    assert got[1].dtype == torch.float32  # coordinates stay fp32
    errors = relative_errors(got, expected)
    assert max(errors.values()) < BF16_TOLERANCE[device], errors
    assert max(errors.values()) > 1e-4  # the products did run in bf16


# -- compiled for an H100 (sm_90) without one: what the kernels are made of --------------------------


def atomic_targets(ttir: str) -> list[str]:
    """The kernel arguments that the atomic adds in Triton IR write through: each atomic's pointer
    operand followed back through addptr/splat/broadcast/expand_dims to a function argument."""
    definitions = {}
    for line in ttir.splitlines():
        match = re.match(r"\s*(%[\w.]+) = (\S+) (%[\w.]+)", line)
        if match:
            definitions[match[1]] = (match[2], match[3])
    targets = []
    for line in ttir.splitlines():
        match = re.search(r"tt\.atomic_rmw \w+, \w+, \w+, (%[\w.]+)", line)
        if match:
            name = match[1]
            while name in definitions and definitions[name][0] in (
                "tt.addptr", "tt.splat", "tt.broadcast", "tt.expand_dims", "tt.reshape"):
                name = definitions[name][1]
            targets.append(name.lstrip("%"))
    return targets


def compile_edge_kernel_for_sm90(kernel: str, precision: str) -> dict[str, str]:
    """Triton IR and PTX of the "forward" or "backward" kernel compiled for sm_90 at ``precision``
    (H = 64, D = 3, Fe = 2, int32 node indices, one of the tile shapes the CUDA autotuner tries)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    forward, backward = triton_edges._kernels(False)
    tuned = forward if kernel == "forward" else backward
    flags = {} if kernel == "forward" else {"NEED_ATTR": True, "NEED_SHIFT": True}
    signature = {arg: "*fp32" for arg in tuned.fn.arg_names if arg.endswith("_ptr")}
    signature.update({"ptr_ptr": "*i64", "source_ptr": "*i32", "target_ptr": "*i32", "num_nodes": "i32"})
    constants = {**triton_edges._sizes(64, 3, 2), "HAS_SHIFT": True, **flags,
                 **triton_edges._dot_options(precision, torch.float32), "BLOCK_R": 16, "BLOCK_E": 64}
    source = ASTSource(tuned.fn, {**signature, **{c: "constexpr" for c in constants}}, constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    return {"ttir": compiled.asm["ttir"], "ptx": compiled.asm["ptx"]}


def ptx_counts(ptx: str) -> dict[str, int]:
    return {"atomics": len(re.findall(r"\b(?:atom|red)\.global", ptx)),
            "mma": len(re.findall(r"\bmma\.sync\.", ptx)), "wgmma": len(re.findall(r"\bwgmma\.mma_async\.", ptx))}


def edge_kernel_report(*cases: str) -> None:
    """Printed by the child process of the test below, one line per "precision/kernel" case:
    the atomics' targets and the PTX's instruction counts."""
    for case in cases:
        precision, kernel = case.split("/")
        asm = compile_edge_kernel_for_sm90(kernel, precision)
        print(precision, kernel, ",".join(atomic_targets(asm["ttir"])) or "-",
              " ".join(f"{k}={v}" for k, v in ptx_counts(asm["ptx"]).items()))


@pytest.mark.slow
def test_edge_kernels_compile_for_an_h100_without_atomics_on_parameters_and_with_tensor_cores():
    """The interpreter runs none of Triton's compiler passes; this does (in a child process
    without TRITON_INTERPRET, which the test session sets), and reads what came out: the only
    atomic adds are the backward's two source-side node gradients (parameter gradients go to a
    per-program buffer, receiver-side sums are stored once per block), and the weight products
    use tensor-core instructions (TF32 forward, bf16 backward)."""
    pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:
        pytest.skip("this Triton has no ASTSource / GPUTarget")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # as launched; silences Triton 3.9's notice
    cases = ("tf32/forward", "bf16/backward")  # 20 s to a minute of compiling each
    code = f"from tests.nn.test_triton_edges import edge_kernel_report as r; r(*{cases!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = {}
    for line in result.stdout.splitlines():
        precision, kernel, targets, *counts = line.split()
        seen[precision, kernel] = (targets, dict(c.split("=") for c in counts))
    assert len(seen) == len(cases), result.stdout
    for (precision, kernel), (targets, counts) in seen.items():
        if kernel == "forward":
            assert targets == "-" and counts["atomics"] == "0", (precision, kernel, targets, counts)
        else:
            assert sorted(targets.split(",")) == ["g_p_src_ptr", "g_pos_src_ptr"], (precision, targets)
        tensor_cores = int(counts["mma"]) + int(counts["wgmma"])
        assert (tensor_cores > 0) == (precision != "ieee"), (precision, kernel, counts)
