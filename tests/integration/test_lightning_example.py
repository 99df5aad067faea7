"""examples/lightning_example.py runs end to end with small settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


pytest.importorskip(
    "lightning",
    reason='PyTorch Lightning is not installed: pip install -e ".[lightning]" (or ".[test]")',
)
pytest.importorskip("sklearn", reason='scikit-learn is not installed: pip install -e ".[test]"')

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
def test_lightning_example_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location(
        "lightning_example", ROOT / "examples" / "lightning_example.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["lightning_example.py", "--n-screening", "2", "--n-promoted", "1", "--epochs", "2"]
    # With optuna-integration installed, the promoted trial also runs its pruning callback.
    try:
        import optuna_integration  # noqa: F401
    except ImportError:
        pass
    else:
        argv.append("--pruning")
    monkeypatch.setattr("sys.argv", argv)
    example.main()
    out = capsys.readouterr().out
    assert "Round 0: 2 screened (screening done, 2 valid), 1 promoted" in out
    assert "Best trial 2: validation accuracy" in out
