"""``archobj report`` end to end on a fixture grid (analysis/fixture.py), its one-line errors, and
the notebook executed on the same fixture."""

from __future__ import annotations

import os
import pathlib

import pytest

from analysis import fixture, reference
from harness import cli
from tests.helpers import assert_one_line_error

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fixture.write_fixture_grid(root)
    fixture.write_fixture_grid(root, "fixture_seed1", seed=1)
    return root


def test_report_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", str(runs / "fixture"), str(runs / "fixture_seed1"), "--out",
                     str(out), "--bootstrap", "200"]) == 0
    assert "wrote" in capsys.readouterr().out
    index = (out / "index.md").read_text()
    # Scales, the paper beside ours, what the intervals cover, the flags.
    assert fixture.SCALE in index and reference.PAPER_LABEL in index
    assert "What the intervals cover" in index and "200 replicates" in index
    assert "**failed** `fixture/nd_plm_64-nd_mtf_72.eai`: ValueError: a fixture failure" in index
    assert "— (pending)" in index and "missing" in index
    for title in ("Table 3 shape", "Table 6 shape", "Table 7 shape", "Table 8 shape",
                  "The paper's findings", "Compute per training stage"):
        assert title in index, title
    assert "| Causal decoder (FLM) | 168B | cd_flm_64 |" in index
    assert "sd " in index and "(2 seeds)" in index                    # replicates over seeds
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert len(figures) == 10 and all(f"figure{i}" in " ".join(figures) for i in range(4, 9))
    for name in figures:
        if name.endswith(".png"):
            assert f"figures/{name}" in index
    tables = list((out / "tables").glob("*"))
    assert {p.suffix for p in tables} == {".md", ".csv", ".tex"} and len(tables) == 11 * 3
    assert "T0-Eval by held-out task family" in index and "families above chance" in index
    assert "EAI-Eval by held-out task family" in index
    assert "The paper's findings in one line each" in index
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "<table>" in page
    assert fixture.SCALE in page and "failed" in page


def test_report_on_a_partial_grid_and_on_a_runs_root(runs, tmp_path):
    """A root of several grids; a grid whose every evaluation is still pending."""
    from analysis.report import write_report

    partial = tmp_path / "partial"
    grid = fixture.write_fixture_grid(partial, docs=4)
    for results in grid.glob("*/results"):
        for path in results.iterdir():
            path.unlink()
    index = write_report([partial], tmp_path / "out", replicates=20).read_text()
    assert "0 of" not in index and "have no results yet" in index
    assert "no results" in index or "— (" in index
    index = write_report([runs], tmp_path / "out2", replicates=20).read_text()
    assert "fixture_seed1" in index


def test_report_errors_are_one_line(tmp_path, capsys):
    from analysis.report import write_report

    with pytest.raises(ValueError) as excinfo:
        write_report([tmp_path / "nowhere"], tmp_path / "out")
    assert_one_line_error(excinfo, "nowhere", "no such file or directory")
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("archobj: error:") and "\n" not in error and "holds no results" in error
    assert cli.main(["report", str(tmp_path / "empty"), "--bootstrap", "0"]) == 2
    assert "--bootstrap 0" in capsys.readouterr().err


def test_the_notebook_executes_on_a_fixture_grid(runs, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    monkeypatch.setenv("ARCHOBJ_RUNS", str(runs / "fixture"))
    monkeypatch.setenv("ARCHOBJ_BOOTSTRAP", "50")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 5                                   # Figures 4-8 for the one scale
    text = " ".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "Table 3 shape" in text and fixture.SCALE in text
    # No logic of its own: the notebook defines no function or class.
    source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "def " not in source and "class " not in source
    assert os.environ["ARCHOBJ_RUNS"] == str(runs / "fixture")
