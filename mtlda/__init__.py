"""mtlda: dense multi-task learning with cross-task attention (DenseMTL), supervised, UDA and SDE."""

__version__ = "0.1.0"
