"""Human evaluation: export a blinded sheet, fill it as raters would, import, check un-blinding and statistics."""

from __future__ import annotations

import csv
import json
import re

import pytest

from training.artifact.errors import ConfigError, DataError
from training.evaluation.human import export_sheet, load_prompts
from training.evaluation.human_import import import_ratings
from training.evaluation.human_stats import fleiss_kappa, mean_interval, pairwise_kappa, wilson_interval

CRITERIA = ["helpfulness", "correctness"]


def make_sheet(tmp_path, n=24, models=("good", "bad")):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "instruction": f"What is {i} + {i}?"}) + "\n" for i in range(n)))
    items = load_prompts(prompts)
    answers = {m: [f"{m}: {2 * i}" if m == "good" else f"{m}: {i}{i} maybe" for i in range(n)] for m in models}
    paths = export_sheet(items, answers, tmp_path / "sheet", CRITERIA, seed=5)
    return items, paths


def read_sheet(paths):
    with open(paths["csv"], newline="") as handle:
        return list(csv.DictReader(handle))


def rate(rows, rater, tie_every=0):
    """A rater who checks the arithmetic: the correct response wins and scores 5, the other 2."""
    out = []
    for n, row in enumerate(rows):
        i = int(re.search(r"What is (\d+)", row["prompt"]).group(1))
        letters = [k.removeprefix("response_") for k in row if k.startswith("response_")]
        right = next(p for p in letters if row[f"response_{p}"].endswith(f": {2 * i}"))
        rating = {"sheet_id": row["sheet_id"], "row_id": row["row_id"], "rater": rater,
                  "preference": "tie" if tie_every and n % tie_every == 0 else right}
        for p in letters:
            for c in CRITERIA:
                rating[f"score_{p}_{c}"] = 5 if p == right else 2
        out.append(rating)
    return out


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_export_blinds_and_keeps_key_apart(tmp_path):
    items, paths = make_sheet(tmp_path)
    key = json.loads(paths["key"].read_text())
    assert paths["key"].parent != paths["csv"].parent and not list((tmp_path / "sheet").glob("*key*"))
    rows = read_sheet(paths)
    assert len(rows) == len(items) == len(key["rows"])
    firsts = {key["rows"][r["row_id"]]["positions"]["A"] for r in rows}
    assert firsts == {"good", "bad"}, "order must vary per row"
    for row in rows:  # the key maps every position back to the model whose answer is there
        for letter, model in key["rows"][row["row_id"]]["positions"].items():
            assert row[f"response_{letter}"].startswith(f"{model}:")
    sheet_text = paths["csv"].read_text() + paths["jsonl"].read_text()
    assert "positions" not in sheet_text
    page = paths["html"].read_text()
    meta = json.loads(re.search(r'id="sheet-meta">(.*?)</script>', page, re.S).group(1))
    assert meta["rows"] == [r["row_id"] for r in rows]
    assert meta["columns"] == ["sheet_id", "row_id", "rater", "preference", "score_A_helpfulness",
                               "score_A_correctness", "score_B_helpfulness", "score_B_correctness", "comment"]
    assert "<script src" not in page and "<link" not in page, "the page must be self-contained"


def test_round_trip_unblinds_and_reports(tmp_path):
    _, paths = make_sheet(tmp_path)
    rows = read_sheet(paths)
    ann = write_csv(tmp_path / "ann.csv", rate(rows, "ann"))
    bob = write_csv(tmp_path / "bob.csv", rate(rows, "bob", tie_every=4))
    report, out = import_ratings(paths["key"], [ann, bob])
    pair = report["pairwise"][0]
    assert (pair["a"], pair["b"]) == ("good", "bad")
    assert pair["wins_a"] == 24 + 18 and pair["wins_b"] == 0 and pair["ties"] == 6
    assert pair["win_rate"] == 1.0 and pair["low"] == pytest.approx(wilson_interval(42, 42)[0])
    assert report["scores"]["good"]["correctness"]["mean"] == 5 and report["scores"]["bad"]["helpfulness"]["mean"] == 2
    agree = report["agreement"]
    assert agree["preference_percent_agreement"] == pytest.approx(18 / 24)
    assert agree["score_weighted_kappa"] == pytest.approx(1.0)
    # by hand: P-bar = 18/24, p(good) = 42/48, p(tie) = 6/48 -> Pe = 0.78125 -> kappa = (0.75 - Pe)/(1 - Pe) = -1/7
    # (the kappa paradox: high raw agreement on a skewed category can still score below chance)
    assert agree["preference_fleiss_kappa"] == pytest.approx(-1 / 7)
    unblinded = [json.loads(x) for x in (out / "unblinded_ratings.jsonl").read_text().splitlines()]
    assert {r["winner"] for r in unblinded} == {"good", "tie"}
    assert (out / "human_eval_report.html").is_file() and "win rate" in (out / "human_eval_report.md").read_text()


def test_three_models_and_jsonl_ratings(tmp_path):
    items, paths = make_sheet(tmp_path, n=9, models=("good", "bad", "worse"))
    rows = read_sheet(paths)
    ratings = tmp_path / "r.jsonl"
    ratings.write_text("".join(json.dumps(r) + "\n" for r in rate(rows, "cy")))
    report, _ = import_ratings(paths["key"], [ratings], out=tmp_path / "rep")
    by_pair = {(p["a"], p["b"]): p for p in report["pairwise"]}
    assert by_pair[("good", "bad")]["wins_a"] == 9 and by_pair[("bad", "worse")]["wins_a"] == 0
    assert report["agreement"]["note"].startswith("agreement needs")


@pytest.mark.parametrize(("change", "message"), [
    ({"preference": "C"}, "preference 'C' is not one of"),
    ({"score_A_helpfulness": "7"}, "is not an integer 1-5"),
    ({"score_B_correctness": "3.5"}, "is not an integer 1-5"),
    ({"row_id": "r9999"}, "unknown row_id"),
    ({"sheet_id": "other"}, "belongs to sheet other"),
])
def test_bad_ratings_are_refused(tmp_path, change, message):
    _, paths = make_sheet(tmp_path, n=3)
    rated = rate(read_sheet(paths), "ann")
    rated[1].update(change)
    with pytest.raises(DataError, match=message):
        import_ratings(paths["key"], [write_csv(tmp_path / "x.csv", rated)])


def test_export_refuses_bad_setups(tmp_path):
    items = [{"id": "1", "instruction": "hi", "input": ""}]
    with pytest.raises(ConfigError, match="2\\+ models"):
        export_sheet(items, {"only": ["x"]}, tmp_path / "s", CRITERIA)
    with pytest.raises(ConfigError, match="keep the key apart"):
        export_sheet(items, {"a": ["x"], "b": ["y"]}, tmp_path / "s", CRITERIA, key_path=tmp_path / "s" / "key.json")


def test_agreement_statistics_by_hand():
    # Fleiss (1971) worked example as given on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    # Cohen: po = 3/4, pe = 0.5*0.25 + 0.5*0.75 = 0.5 -> kappa = 0.5
    assert pairwise_kappa({"a": {"1": "x", "2": "x", "3": "y", "4": "y"},
                           "b": {"1": "x", "2": "y", "3": "y", "4": "y"}}) == pytest.approx(0.5)
    ci = mean_interval([1, 2, 3, 4, 5])
    assert ci["mean"] == 3 and ci["low"] == pytest.approx(3 - 2.776445 * 1.581139 / 5 ** 0.5, abs=1e-4)


NODE_SHIM = r"""
const vm = require('vm');
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const els = input.elements.map(e => ({...e, dataset: {col: e.col}}));
const byId = {rater: {value: ''}, progress: {textContent: ''}, 'sheet-meta': {textContent: input.meta}};
let saved = null;
global.document = {
  getElementById: id => byId[id], querySelectorAll: () => els, addEventListener: () => {},
  querySelector: sel => els.find(e => e.name === sel.match(/name="(.*)"/)[1] && e.checked) || null,
  createElement: () => ({click() {}}),
};
global.localStorage = {getItem: () => null, setItem: () => {}};
global.Blob = class { constructor(parts) { saved = parts.join(''); } };
global.URL = {createObjectURL: () => 'blob:x'};
global.alert = message => { throw new Error(message); };
vm.runInThisContext(input.script);
byId.rater.value = input.rater;
download();
process.stdout.write(saved);
"""


def page_fields(page: str) -> list[dict]:
    """The form fields of the rating page, as a browser would expose them."""
    from html.parser import HTMLParser

    fields = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if "data-col" in a:
                fields.append({"name": a["name"], "col": a["data-col"], "type": a.get("type", "select-one"),
                               "value": a.get("value", ""), "checked": False})

    Parser().feed(page)
    return fields


def test_rating_page_downloads_what_import_reads(tmp_path):
    """Run the page's own JavaScript (node, with a minimal DOM) and import the CSV it downloads."""
    import shutil
    import subprocess

    if shutil.which("node") is None:
        pytest.skip("node is not installed; the page's script is exercised only where node exists")
    _, paths = make_sheet(tmp_path, n=4)
    page = paths["html"].read_text()
    key = json.loads(paths["key"].read_text())
    fields = page_fields(page)
    for f in fields:  # the rater clicks: always the "good" position, scores 4, and a comment with a comma
        row_id, col = f["name"].split("|")
        good = next(p for p, m in key["rows"][row_id]["positions"].items() if m == "good")
        if col == "preference":
            f["checked"] = f["value"] == good
        elif col.startswith("score_"):
            f["value"] = "4"
        else:
            f["value"] = 'fine, "ok"'
    script = re.search(r"<script>(.*)</script>", page, re.S).group(1)
    meta = re.search(r'id="sheet-meta">(.*?)</script>', page, re.S).group(1)
    done = subprocess.run(["node", "-e", NODE_SHIM], input=json.dumps(
        {"elements": fields, "script": script, "meta": meta, "rater": "dee"}), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ratings = tmp_path / "ratings-dee.csv"
    ratings.write_text(done.stdout)
    report, out = import_ratings(paths["key"], [ratings], out=tmp_path / "rep")
    assert report["pairwise"][0]["wins_a"] == 4 and report["scores"]["bad"]["correctness"]["mean"] == 4
    comments = {json.loads(line)["comment"] for line in (out / "unblinded_ratings.jsonl").read_text().splitlines()}
    assert comments == {'fine, "ok"'}
