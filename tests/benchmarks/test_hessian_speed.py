"""The scoring-cost benchmark: its contenders estimate what they claim, its quick mode runs.

No thresholds on speed: the benchmark reports whatever it measures. What is checked is that
every contender computes the quantity it is compared on, against a dense float64 Hessian.
"""

from __future__ import annotations

from pathlib import Path
import re
import subprocess
import sys

import pytest
import torch
from torch import nn


pytest.importorskip("sklearn")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import hessian_speed  # noqa: E402


def small_model() -> nn.Module:
    torch.manual_seed(0)
    # 8*16 + 16 + 16*4 + 4 = 212 parameters: room for 200 probes (curvlinops wants k < P).
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(32, 8, generator=generator, dtype=torch.float64),
            torch.randint(0, 4, (32,), generator=generator),
        )
        for _ in range(n)
    ]


def test_dense_hessian_and_last_layer_block_are_the_ground_truth() -> None:
    """The benchmark's reference matches torch.autograd.functional.hessian, block included."""
    model, (x, y) = small_model(), batches(1)[0]
    loss_fn = nn.CrossEntropyLoss()
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        weights = [t.view_as(p) for t, p in zip(flat.split(sizes), params)]
        hidden = torch.tanh(x @ weights[0].T + weights[1])
        return loss_fn(hidden @ weights[2].T + weights[3], y)

    expected = torch.autograd.functional.hessian(
        loss_of, torch.cat([p.reshape(-1) for p in params])
    )
    dense = hessian_speed.dense_hessian(model, x, y, loss_fn)
    torch.testing.assert_close(dense, expected, rtol=1e-10, atol=1e-12)
    assert hessian_speed.last_layer_slice(model) == slice(8 * 16 + 16, 212)


def test_whole_network_contenders_estimate_each_batch_on_its_own() -> None:
    """Every contender's per-batch norm is close to the dense one at many probes.

    A contender that mixed batches up (PyHessian accumulates its gradient graph in ``.grad``
    unless it is cleared) is off by tens of percent on the later batches; the tolerance, 10 %,
    is about five standard deviations of a 200-probe Rademacher estimate on this model.
    """
    model, data = small_model(), batches(3)
    loss_fn = nn.CrossEntropyLoss()
    exact = [
        torch.linalg.matrix_norm(hessian_speed.dense_hessian(model, x, y, loss_fn)).item()
        for x, y in data
    ]
    contenders, missing = hessian_speed.whole_network_contenders(strategies=True)
    assert {"hutchinson", "hutch++", "hutchinson forward"} <= set(contenders)
    for name in ("PyHessian", "curvlinops"):
        assert name in contenders or any(note.startswith(name) for note in missing)
    for name, norms in contenders.items():
        estimates = norms(model, data, loss_fn, 200, 0)
        assert len(estimates) == len(data), name
        for estimate, truth in zip(estimates, exact):
            assert estimate == pytest.approx(truth, rel=0.1), name
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_mode_prints_every_contender_and_exact_closed_forms() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "hessian_speed.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=480,  # generous: a busy shared machine slows it several times
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout
    contenders, _ = hessian_speed.whole_network_contenders(strategies=True)
    verdict = r"<= \d+\.\d\d  (met|NOT met)$"
    for model in ("MLP 784-256-256-10", "small CNN"):
        section = output.split(model, 1)[1]
        for row in ("forward only", "training epoch", "paper", "last_layer", *contenders):
            assert re.search(rf"^  {re.escape(row)}[ (].*\d", section, re.MULTILINE), (model, row)
        assert re.search(r"^  last_layer .*" + verdict, section, re.MULTILINE), model
        if "PyHessian" in contenders:
            assert re.search(r"^  time hutchinson / PyHessian .*" + verdict, section, re.M), model
        assert re.search(r'strategy="auto" chose (batched|loop|forward) ', section), model
    large = output.split("One batch of 2304 examples, 1000 classes", 1)[1]
    assert re.search(r"^  last_layer .*<= 10\.00  (met|NOT met)$", large, re.MULTILINE)
    assert re.search(r"at 4 products: .* the lower is (hutch\+\+|hutchinson)$", output, re.M)
    # The exact estimator agrees with its dense block to rounding, on both small models.
    errors = re.findall(r"^    last_layer\s+last-layer block\s+(\S+)", output, re.MULTILINE)
    assert len(errors) == 2
    assert all(float(error) < 1e-10 for error in errors)


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "hessian_speed.py"), "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "no CUDA device is available here" in completed.stderr
    assert "--device cpu" in completed.stderr
