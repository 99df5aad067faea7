"""``python -m optuna_convexity``: the ``optuna-convexity`` command."""

from optuna_convexity._cli import main


raise SystemExit(main())
