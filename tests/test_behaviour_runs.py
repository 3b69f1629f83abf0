"""Behaviour tests of the run-folder logs in m2df.runs (issue 23): metrics.csv and the JSON-lines logs keep every row, once,
in order, with one header."""
import csv, json

from m2df.runs import RunDir


def test_metrics_csv_keeps_every_row_under_one_header(tmp_path):
    run = RunDir(tmp_path / 'r'); run.path.mkdir()
    rows = [dict(step=1, episode=2, loss=0.5, lr=1e-3), dict(step=2, episode=4, loss=0.25, lr=5e-4), dict(step=3, episode=6, loss=0.125, lr=0.)]
    for r in rows: run.log_metrics(r)
    text = (run.path / 'metrics.csv').read_text()
    assert text.splitlines()[0] == 'step,episode,loss,lr' and text.count('step,episode') == 1
    with open(run.path / 'metrics.csv', newline='') as fh:
        got = list(csv.DictReader(fh))
    assert got == [{k: str(v) for k, v in r.items()} for r in rows]
    run2 = RunDir(tmp_path / 'r')                          # a resumed run appends to the same file
    run2.log_metrics(dict(step=4, episode=8, loss=0.0625, lr=0.))
    assert len((run.path / 'metrics.csv').read_text().splitlines()) == 5


def test_json_lines_keep_every_record(tmp_path):
    run = RunDir(tmp_path / 'r'); run.path.mkdir()
    recs = [dict(step=2, val_accuracy=41.5, best=True), dict(step=4, val_accuracy=40.0, best=False), dict(step=6, val_accuracy=44.25, best=True)]
    for r in recs: run.log_json('val.jsonl', r)
    text = (run.path / 'val.jsonl').read_text()
    assert text.endswith('\n') and text.count('\n') == 3
    assert [json.loads(l) for l in text.splitlines()] == recs
