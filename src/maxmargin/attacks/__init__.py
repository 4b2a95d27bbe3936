"""Attacks. Every attack leaves ``x``, the model's mode and its parameters' ``.grad``
unchanged, runs the model in eval mode and keeps its output inside ``bounds`` and
the ε-ball."""
from .alma import ALMAResult, alma, alma_search
from .anpgd import ANPGDResult, anpgd, anpgd_search
from .ddn import DDNResult, ddn, ddn_search
from .fab import FABResult, fab, fab_search
from .pgd import fgsm, pgd

__all__ = ["pgd", "fgsm", "anpgd", "anpgd_search", "ANPGDResult", "ddn", "ddn_search", "DDNResult",
           "alma", "alma_search", "ALMAResult", "fab", "fab_search", "FABResult"]
