"""Annotation: export rows to label, import Label Studio / CSV labels, merge, agreement."""

from __future__ import annotations

import csv
import json

import pytest

from training.data.annotate import (
    cohen_kappa,
    export_rows,
    fleiss_kappa,
    merge_annotations,
    read_annotations,
    row_id,
    select_rows,
)
from training.data.tasks import TASKS, Row

SPEC = TASKS["classification"]


def corpus() -> list[Row]:
    rows = []
    for i in range(12):
        rows.append(Row({"text": f"refund for order {i} please", "label": "billing"}, f"f:{i}"))
        rows.append(Row({"text": f"parcel {i} has not arrived", "label": "shipping"}, f"g:{i}"))
    rows.append(Row({"text": "refund my parcel order", "label": None}, "u:1"))
    rows.append(Row({"text": "where is parcel 99", "label": None}, "u:2"))
    return rows


def test_select_unlabeled_and_uncertain():
    rows = corpus()
    assert [r.origin for r, _ in select_rows(rows, SPEC, "unlabeled")] == ["u:1", "u:2"]
    ranked = select_rows(rows, SPEC, "uncertain", limit=3)
    assert len(ranked) == 3 and ranked[0][1] <= ranked[1][1] <= ranked[2][1]
    assert ranked[0][0].origin == "u:1"  # the mixed billing/shipping text is the least confident


def test_export_formats_round_trip_through_import(tmp_path):
    rows = corpus()
    picked = select_rows(rows, SPEC, "unlabeled")
    assert export_rows(picked, SPEC, tmp_path / "x.csv", "csv") == 2
    assert export_rows(picked, SPEC, tmp_path / "x.jsonl", "jsonl") == 2
    export_rows(picked, SPEC, tmp_path / "ls.json", "labelstudio", ["billing", "shipping"])
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert tasks[0]["data"]["row_id"] == row_id(rows[-2].data, SPEC) and tasks[0]["data"]["text"] == "refund my parcel order"
    with (tmp_path / "x.csv").open() as fh:
        exported = list(csv.DictReader(fh))
    exported[0]["label"], exported[1]["label"] = "billing", "shipping"
    with (tmp_path / "alice.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(exported[0]))
        writer.writeheader()
        writer.writerows(exported)
    votes, _ = read_annotations([str(tmp_path / "alice.csv")])
    assert sorted(v[2] for v in votes) == ["billing", "shipping"] and {v[1] for v in votes} == {"alice"}


def label_studio_export(choices_by_annotator: dict[str, list[str]]) -> list[dict]:
    n = len(next(iter(choices_by_annotator.values())))
    return [{"id": i, "data": {"row_id": f"r{i}", "text": f"item {i}"}, "annotations": [
        {"completed_by": {"email": who}, "was_cancelled": False,
         "result": [{"type": "choices", "from_name": "label", "to_name": "text", "value": {"choices": [labels[i]]}}]}
        for who, labels in choices_by_annotator.items()]} for i in range(n)]


def test_merge_agreement_and_conflicts(tmp_path):
    a = ["x", "x", "y", "y", "x", "y", "x", "x"]
    b = ["x", "y", "y", "y", "x", "y", "y", "x"]
    (tmp_path / "ls.json").write_text(json.dumps(label_studio_export({"ann": a, "bob": b})))
    with (tmp_path / "cy.csv").open("w", newline="") as fh:
        fh.write("row_id,label,annotator\n" + "".join(f"r{i},{lab},cy\n" for i, lab in enumerate(a[:4])))
    votes, _ = read_annotations([str(tmp_path / "ls.json"), str(tmp_path / "cy.csv")])
    merged, report = merge_annotations(votes)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert report["cohen_kappa"]["ann|bob"]["cohen_kappa"] == pytest.approx(sklearn.cohen_kappa_score(a, b), abs=1e-4)
    assert report["cohen_kappa"]["ann|cy"]["cohen_kappa"] == 1.0
    assert merged["r1"] == "x"  # ann + cy outvote bob
    assert report["conflicts"] == 1 and report["conflict_examples"][0]["item"] == "r6"  # 1-1 tie, no third vote
    assert "r6" not in merged
    merged_first, _ = merge_annotations(votes, on_conflict="first")
    assert merged_first["r6"] == "x"


def test_fleiss_kappa_matches_a_hand_computed_case():
    # 3 raters, 4 items; p_bar = (1 + 1/3 + 1 + 1/3) / 4 = 2/3; a and b each 6 of 12 ratings, p_e = 1/2
    items = [["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"], ["a", "b", "b"]]
    assert fleiss_kappa(items) == pytest.approx((2 / 3 - 1 / 2) / (1 - 1 / 2), abs=1e-4)
    # 2 raters: Fleiss reduces to Scott's pi, = Cohen when both raters share marginals
    assert fleiss_kappa([["a", "a"], ["a", "b"], ["b", "a"], ["b", "b"]]) == cohen_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"])
    assert fleiss_kappa([["a", "a"], ["b", "b"]]) == 1.0
    assert cohen_kappa([], []) is None
