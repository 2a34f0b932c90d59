"""mtlda: dense multi-task learning with cross-task attention (DenseMTL), supervised, UDA and SDE."""

__version__ = "0.2.0"


def load_model(checkpoint, device: str = "cpu", overrides: tuple[str, ...] = ()):
    """The trained model of ``checkpoint`` in eval mode, with ``predict(image)`` (see :mod:`mtlda.api`)."""
    from mtlda.api import load_model as _load_model

    return _load_model(checkpoint, device, overrides)
