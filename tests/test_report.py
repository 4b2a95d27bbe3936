"""Reports draw with matplotlib's Figure API: the caller's backend stays as it was, and the plots are written."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from maxmargin.evaluate import EvalResult
from maxmargin.report import compare_runs, plot_margins, plot_sandwich, write_eval_report

CHECK_BACKEND = """
import matplotlib
matplotlib.use("svg")                      # a user's choice, e.g. a notebook's inline backend
import maxmargin.report, maxmargin.cli
print(matplotlib.get_backend())
"""


def test_importing_the_report_module_leaves_the_backend_alone():
    p = subprocess.run([sys.executable, "-c", CHECK_BACKEND], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "svg"


def _result() -> EvalResult:
    robust = torch.tensor([[True, True, False, True], [True, False, False, False]])
    return EvalResult(eps=[0.1, 0.2], clean_accuracy=0.75, robust_accuracy={0.1: 0.75, 0.2: 0.25}, robust=robust,
                      by_attack={"pgd-ce": {0.1: 0.75, 0.2: 0.25}},
                      attacks=[{"attack": "pgd-ce", "eps": e, "steps": 50, "restarts": 1, "source": "white-box",
                                "newly_broken": 0, "accuracy_after": a} for e, a in ((0.1, 0.75), (0.2, 0.25))],
                      margins=torch.tensor([0.3, 0.15, 0.0, 0.12]), certified=torch.tensor([0.1, 0.0, 0.0, 0.05]),
                      certify_method="ibp")


def test_plots_and_reports_are_written_without_touching_pyplot(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    write_eval_report(_result(), tmp_path / "run", "t", {"seed": 0})
    for f in ("eval.json", "report.md", "robust_accuracy.png", "margin_hist.png", "margin_cdf.png"):
        assert (tmp_path / "run" / f).stat().st_size > 0, f
    plot_sandwich(torch.tensor([0.1, 0.0]), torch.tensor([0.3, 0.2]), tmp_path / "run", "linf", "ibp")
    plot_margins(torch.tensor([0.3, 0.2]), tmp_path / "run", "linf", 0.5, {0.1: 1.0})
    assert (tmp_path / "run" / "margin_sandwich.png").read_bytes()[:4] == b"\x89PNG"
    table = compare_runs([tmp_path / "run"], tmp_path / "cmp")
    assert "· certified" in table and (tmp_path / "cmp" / "compare.png").is_file()
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["seed"] == 0
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert matplotlib.get_backend() == backend
