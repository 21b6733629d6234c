"""`delia report` reads runs back from MLflow and compares them in a table and plots."""
from __future__ import annotations

import json

import mlflow
import pytest

from delia_dist.cli import main
from delia_dist.config import TrackingConfig
from delia_dist.errors import UserError
from delia_dist.experiment.report import build_report, comparison_table, write_report
from delia_dist.tracking import Tracker


def fabricate(tmp_path, name: str, share: float, bleu: list[float], steps: int = 40) -> str:
    """A finished run with the metric names the trainer and evaluator log."""
    t = Tracker(TrackingConfig(experiment="cmp", run_name=name, system_metrics=False), tmp_path, enabled=True)
    t.start({"data": {"sources": [{"name": "diverse", "weight": share}, {"name": "downstream", "weight": 1 - share}]}},
            tags={"world_size": "8"})
    for step in range(5, steps + 1, 5):
        m = {"loss": 3.0 / step ** 0.5, "loss/downstream": 2.5 / step ** 0.5 + share,
             "tokens/downstream": 1000.0 * step, "share/diverse": share}
        if share:
            m.update({"loss/diverse": 3.5 / step ** 0.5, "tokens/diverse": 1000.0 * step * share / (1 - share)})
        t.log_metrics(m, step)
        t.log_metrics({"align/<sep>/json/l0": 1.0 - share * step / steps, "align/<sep>/json/l2": 10 - share}, step)
    for i, b in enumerate(bleu):  # evaluations during training; the last is the final one
        t.log_metrics({"eval/translation/bleu": b, "eval/format/accuracy": 0.5 + share / 2},
                      steps * (i + 1) // len(bleu))
    t.close()
    return t.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    # A `delia experiment` parent run first (oldest): it has no metrics and is no row of the comparison.
    parent = Tracker(TrackingConfig(uri=f"sqlite:///{root}/mlflow.db", experiment="cmp", run_name="matrix",
                                    system_metrics=False), root / "_matrix")
    parent.start({}, tags={"delia.kind": "matrix"})
    parent.close()
    ids = {"baseline": fabricate(root, "baseline", 0.0, [10.0]),
           "delia": fabricate(root, "delia", 0.75, [13.0, 12.5])}
    return root, f"sqlite:///{root}/mlflow.db", ids


def test_report_table_and_plots(store, capsys):
    root, uri, ids = store
    out = root / "out"
    assert main(["report", "cmp", "--tracking-uri", uri, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["run", "steps", "diverse_share", "Mtok"]
    rows = {l.split()[0]: dict(zip(header, l.split())) for l in lines[2:4]}
    assert set(rows) == {"baseline", "delia"} and not lines[4].startswith("matrix")
    assert rows["baseline"]["BLEU"] == "10.000" and rows["delia"]["BLEU"] == "12.500"
    assert rows["delia"]["best_BLEU"] == "13.000" and rows["baseline"]["best_BLEU"] == "-"
    assert rows["delia"]["steps"] == "40" and rows["delia"]["diverse_share"] == "0.750"
    assert rows["delia"]["Mtok_diverse"] == "0.120" and rows["delia"]["Mtok_downstream"] == "0.040"
    assert rows["baseline"]["Mtok_diverse"] == "-"  # the baseline never read diverse data
    assert rows["delia"]["d(<sep>,json)_l0"] == "0.250" and "d(<sep>,json)_l2" in header
    assert float(rows["delia"]["gpu_h"]) == pytest.approx(float(rows["delia"]["time_s"]) * 8 / 3600, abs=2e-3)
    for png in ("loss_per_source.png", "eval_vs_diverse_scale.png", "token_alignment.png"):
        assert (out / png).stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "| baseline |" in md and "![token_alignment](token_alignment.png)" in md
    results = {r["run"]: r for r in json.loads((out / "results.json").read_text())}
    assert results["delia"]["run_id"] == ids["delia"]


def test_report_selected_runs_logged_to_a_summary_run(store, capsys):
    root, uri, ids = store
    path = build_report("cmp", uri, root / "one", run_ids=[ids["delia"]], summary_run=True)
    table = capsys.readouterr().out
    assert "delia" in table and "baseline" not in table and path.is_file()
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    summary = [r for r in runs if r.data.tags.get("delia.kind") == "report"]
    assert len(summary) == 1 and summary[0].data.tags["compared_runs"] == ids["delia"]
    arts = {a.path for a in client.list_artifacts(summary[0].info.run_id, "report")}
    assert {"report/report.md", "report/loss_per_source.png"} <= arts
    # the summary run is not itself compared by later reports
    assert main(["report", "cmp", "--tracking-uri", uri, "--out", str(root / "again")]) == 0
    assert "report-cmp" not in capsys.readouterr().out


def test_report_errors_name_what_is_wrong(store, tmp_path, capsys):
    root, uri, _ = store
    assert main(["report", "nope", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "no MLflow experiment 'nope'" in err and "'cmp'" in err
    assert main(["report", "cmp", "--tracking-uri", f"sqlite:///{tmp_path}/missing.db"]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not (tmp_path / "missing.db").exists()
    with pytest.raises(UserError, match="run 'deadbeef' not found"):
        build_report("cmp", uri, tmp_path / "x", run_ids=["deadbeef"])


def test_report_from_run_directories(tmp_path):
    """`delia experiment` passes rows with run_dir; curves come from metrics.jsonl."""
    rows = []
    for name, share in (("baseline", 0.0), ("delia-1x", 0.5)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        with open(run_dir / "metrics.jsonl", "w") as f:
            for step in range(1, 21):
                rec = {"step": step, "loss": 4 / step, "loss/downstream": 4 / step}
                if share:
                    rec["loss/diverse"] = 5 / step
                if step % 5 == 0:
                    rec.update({"tokens/downstream": 500.0 * step, "tokens/diverse": 500.0 * step * share})
                f.write(json.dumps(rec) + "\n")
        rows.append({"run": name, "run_dir": str(run_dir), "steps": 20, "diverse_share": share,
                     "train_loss_last": 0.2, "eval/translation/bleu": 3.0 + share,
                     "align/<sep>/json/l0": 0.1 + share, "wall_s": 12.0})
    table = comparison_table(rows)
    assert table.splitlines()[0].split()[-3:] == ["BLEU", "d(<sep>,json)_l0", "time_s"]
    write_report(rows, tmp_path / "report")
    assert (tmp_path / "report/loss_per_source.png").stat().st_size > 10_000
    assert (tmp_path / "report/token_alignment.png").is_file()


def test_terminal_table_drops_detail_columns_to_fit_and_names_them():
    """A matrix with many metrics still prints a table that fits the terminal: the headline
    columns (run, steps, share, train loss, BLEU/chrF/format metrics, first alignment, time)
    stay, the detail ones go, and the last line names every column left out."""
    rows = [{"run": f"run-{i}", "steps": 10, "diverse_share": 0.5 * i, "train_loss_last": 1.0,
             "eval/translation/bleu": 3.0, "eval/format/f1": 0.5, "eval/format/precision": 0.5,
             "eval/format/recall": 0.5, "eval/format/answer_loss": 0.2, "tokens/downstream": 1e5,
             "tokens/diverse": 1e5 * i, **{f"align/<sep>/{kw}/l{l}": 0.1 for kw in ("json", "thought") for l in (0, 2)},
             "wall_s": 10.0} for i in range(3)]
    wide = comparison_table(rows)
    narrow = comparison_table(rows, max_width=120)
    assert max(map(len, wide.splitlines())) > 120
    body, note = narrow.splitlines()[:-1], narrow.splitlines()[-1]
    assert max(map(len, body)) <= 120
    header = body[0].split()
    for kept in ("run", "steps", "diverse_share", "train_loss", "BLEU", "fmt_F1", "d(<sep>,json)_l0", "time_s"):
        assert kept in header, header
    dropped = note.removeprefix("(").split(": ", 1)[1].rstrip(")").split(", ")
    assert set(dropped) | set(header) == set(wide.splitlines()[0].split())
    assert not set(dropped) & set(header)
    assert comparison_table(rows, max_width=10_000) == wide
