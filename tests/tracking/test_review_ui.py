"""A tiny matrix reviewed as researchers review it: `delia experiment` on two runs, then the
store read back through MLflow's client, and its runs page opened by headless Chromium
against a real `mlflow ui` (run names, the parent/child grouping, the Dataset column).

DELIA_UI_SCREENSHOT=PATH also saves the review page there (docs/mlflow_review.png)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from chromium import Browser, chromium_binary
from portutil import free_port

from delia_dist.health import wait_healthy
from delia_dist.tracking.datasets import manifest_digest

REPO = Path(__file__).resolve().parents[2]
RUNS = ["baseline", "delia-1x"]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    ws = tmp_path_factory.mktemp("matrix")
    cli = [sys.executable, "-m", "delia_dist.cli"]
    synth = subprocess.run(cli + ["data", "synth", "runs/tiny", "--train", "40", "--eval", "4", "--diverse", "200"],
                           cwd=ws, capture_output=True, text=True)
    assert synth.returncode == 0, synth.stderr[-3000:]
    proc = subprocess.run(cli + ["experiment", str(REPO / "configs/tiny_cpu.yaml"), "--only", ",".join(RUNS),
                                 "--set", "train.max_steps=2", "--set", "eval.every_steps=null",
                                 "--set", "eval.max_new_tokens=8"],
                          cwd=ws, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    root = ws / "runs/tiny"
    client = mlflow.tracking.MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("tiny-delia")
    return {"ws": ws, "root": root, "client": client, "exp": exp, "stdout": proc.stdout,
            "runs": {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}}


def artifact_files(client, run_id, path=None):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += artifact_files(client, run_id, a.path) if a.is_dir else [a.path]
    return sorted(out)


def test_matrix_is_one_parent_run_with_a_child_per_run(matrix):
    client, exp, runs, root = matrix["client"], matrix["exp"], matrix["runs"], matrix["root"]
    assert sorted(runs) == sorted(RUNS + ["tiny-delia"])
    parent = runs.pop("tiny-delia")
    assert parent.data.tags["delia.kind"] == "matrix" and "mlflow.parentRunId" not in parent.data.tags
    assert {n: r.data.tags["mlflow.parentRunId"] for n, r in runs.items()} == {n: parent.info.run_id for n in RUNS}
    assert {n: r.data.tags["delia.run"] for n, r in runs.items()} == {n: n for n in RUNS}
    note = runs["delia-1x"].data.tags["mlflow.note.content"]
    assert "`data.sources.diverse.weight=0.5`" in note and "`train.max_steps=2`" in note and "run_dir=" not in note
    assert "| delia-1x | `data.sources.diverse.weight=0.5`" in parent.data.tags["mlflow.note.content"]
    # The comparison is the parent's: table, report, plots.
    files = artifact_files(client, parent.info.run_id)
    assert {"report/comparison.txt", "report/report.md", "report/results.json",
            "report/loss_per_source.png"} <= set(files)
    (root / "dl").mkdir()
    table = Path(client.download_artifacts(parent.info.run_id, "report/comparison.txt", str(root / "dl")))
    assert set(RUNS) <= {line.split()[0] for line in table.read_text().splitlines() if line.strip()}
    # Each run's data: the baseline reads no diverse data (weight 0), DELIA reads both.
    inputs = {n: {d.dataset.name: (d.dataset.digest, d.tags[0].value) for d in r.inputs.dataset_inputs}
              for n, r in runs.items()}
    digest = {s: manifest_digest(json.loads((root / f"shards/{s}/manifest.json").read_text()))
              for s in ("diverse", "downstream")}
    assert inputs["baseline"] == {"downstream": (digest["downstream"], "downstream")}
    assert inputs["delia-1x"] == {s: (digest[s], s) for s in ("diverse", "downstream")}
    # The experiment: a training experiment, its artifacts in a directory of its own.
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location == (root / "mlartifacts" / "tiny-delia").resolve().as_uri()
    assert json.loads((root / "experiment_results.json").read_text())[-1]["run"] == "delia-1x"
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in matrix["stdout"]


@pytest.fixture(scope="module")
def mlflow_ui(matrix):
    port = free_port()
    log = matrix["ws"] / "ui.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                             f"sqlite:///{matrix['root']}/mlflow.db", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"})
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", 180, alive=lambda: proc.poll() is None, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)


def column(name: str, link: bool = False) -> str:
    """JS: the runs table's cells of one column, top to bottom (ag-grid renders rows
    absolutely positioned, in any DOM order, so they are sorted by their row-index);
    link: the text of the cell's link only (a run name, not its colour swatch's label)."""
    text = "(c.querySelector('a') || c).innerText" if link else "c.innerText"
    return (f"[...document.querySelectorAll('[col-id=\"attributes.`{name}`\"][role=gridcell]')]"
            f".map(c => [+c.closest('[row-index]').getAttribute('row-index'), {text}.replace(/\\s+/g, ' ').trim()])"
            ".sort((a, b) => a[0] - b[0]).map(x => x[1])")


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium (scripts/install.sh --browser installs it)")
def test_review_page_in_headless_chromium(matrix, mlflow_ui, tmp_path):
    from delia_dist.experiment.run_tracking import review_url

    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(review_url(mlflow_ui, matrix["exp"].experiment_id))
        names = column("Run Name", link=True)
        assert browser.wait_for(f"{names}.length && {names}") == ["tiny-delia"]  # children folded under it
        assert "3 matching runs" in browser.text()
        expanders = browser.js("(() => { const b = document.querySelectorAll("
                               "'button[data-component-id*=\"runnamecellrenderer\"]'); b.forEach(x => x.click());"
                               " return b.length; })()")
        assert expanders == 1  # only the parent has children
        shown = browser.wait_for(f"{names}.length === 3 && {names}")
        assert shown[0] == "tiny-delia" and sorted(shown[1:]) == sorted(RUNS)
        datasets = browser.js(column("Dataset"))
        by_run = dict(zip(shown, datasets))
        root = matrix["root"]
        digest = manifest_digest(json.loads((root / "shards/downstream/manifest.json").read_text()))
        assert by_run["tiny-delia"] == "-"
        assert f"downstream ({digest})" in by_run["baseline"] and "diverse (" not in by_run["baseline"]
        assert "diverse (" in by_run["delia-1x"]
        assert browser.js("document.querySelector('[data-testid=\"experiment-link\"]')?.innerText") == "tiny-delia"
        browser.js("document.querySelector('button[aria-label=\"Close\"]')?.click()")  # the assistant panel
        shot = browser.screenshot(tmp_path / "review.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("DELIA_UI_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["DELIA_UI_SCREENSHOT"])
    finally:
        browser.close()
