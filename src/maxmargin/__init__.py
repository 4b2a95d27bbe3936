"""maxmargin: Max-Margin Adversarial training and honest robustness evaluation."""
__version__ = "0.1.0"

from .runs import load_data, load_model

__all__ = ["__version__", "load_model", "load_data"]
