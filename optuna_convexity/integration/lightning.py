"""PyTorch Lightning: :class:`ConvexityCallback` (``pip install "optuna-convexity[lightning]"``).

Add the callback to ``Trainer(callbacks=...)`` and call :meth:`ConvexityCallback.check_pruned`
after ``trainer.fit``: screening trials are scored after their first epoch and end PRUNED,
promoted trials train in full (with Optuna's pruning callback, if given).

Example:

    .. code-block:: python

        from optuna_convexity.integration.lightning import ConvexityCallback

        callback = ConvexityCallback(trial, torch.nn.functional.cross_entropy, monitor="val_acc")
        trainer = lightning.pytorch.Trainer(max_epochs=20, callbacks=[callback])
        trainer.fit(model, datamodule=data)
        callback.check_pruned()
        return trainer.callback_metrics["val_acc"].item()

Supports the ``lightning`` package (``lightning.pytorch``) 2.x; the separate
``pytorch_lightning`` package has its own ``Callback`` class, which its ``Trainer`` requires.
"""

from optuna_convexity.integration._lightning import ConvexityCallback


__all__ = ["ConvexityCallback"]
