"""bluepri: SDXL + LoRA for blueprint synthesis, on Ray (prepare, train, tune, serve, render)."""

__version__ = "0.1.0"
