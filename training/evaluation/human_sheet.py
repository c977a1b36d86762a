"""The self-contained HTML rating page of a human-evaluation sheet (no network, no external files).

A rater types their name, picks a preference (a position or tie) and 1–5 scores per criterion
for each row, then presses "Download ratings" to save `ratings-<rater>.csv` with the columns
`human_format.rating_columns` lists. Work in progress is kept in the browser's localStorage.

    html = render_sheet_html(sheet_id, rows, ["A", "B"], ["helpfulness", "correctness"])
"""

from __future__ import annotations

import html
import json
from typing import Any

from training.evaluation.human_format import rating_columns
from training.evaluation.render import STYLE

SCRIPT = r"""
const SHEET = JSON.parse(document.getElementById('sheet-meta').textContent);
const store = 'tuneserve-ratings-' + SHEET.sheet_id;
function fields() { return Array.from(document.querySelectorAll('[data-col]')); }
function save() {
  const state = {rater: document.getElementById('rater').value};
  fields().forEach(el => { if ((el.type !== 'radio' || el.checked) && el.value) state[el.name] = el.value; });
  localStorage.setItem(store, JSON.stringify(state));
  const done = SHEET.rows.filter(r => document.querySelector(`input[name="${r}|preference"]:checked`)).length;
  document.getElementById('progress').textContent = `${done} / ${SHEET.rows.length} rows with a preference`;
}
function restore() {
  const state = JSON.parse(localStorage.getItem(store) || '{}');
  document.getElementById('rater').value = state.rater || '';
  fields().forEach(el => {
    if (!(el.name in state)) return;
    if (el.type === 'radio') el.checked = el.value === state[el.name]; else el.value = state[el.name];
  });
  save();
}
function cell(v) { v = String(v ?? ''); return /[",\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function download() {
  const rater = document.getElementById('rater').value.trim();
  if (!rater) { alert('Please enter your name first.'); return; }
  const lines = [SHEET.columns.join(',')];
  SHEET.rows.forEach(row => {
    const values = {row_id: row, rater: rater, sheet_id: SHEET.sheet_id};
    fields().filter(el => el.name.startsWith(row + '|')).forEach(el => {
      if ((el.type !== 'radio' || el.checked) && el.value) values[el.dataset.col] = el.value;
    });
    lines.push(SHEET.columns.map(c => cell(values[c])).join(','));
  });
  const blob = new Blob([lines.join('\n') + '\n'], {type: 'text/csv'});
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = `ratings-${rater.replace(/[^A-Za-z0-9_-]+/g, '_')}.csv`;
  link.click();
}
document.addEventListener('change', save);
document.addEventListener('input', save);
restore();
"""

EXTRA_STYLE = """.row{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}.prompt{white-space:pre-wrap;background:#f8f8f8;padding:.6em}
.answers{display:grid;gap:1em}.answer{border:1px solid #ddd;padding:.6em}.answer pre{white-space:pre-wrap;font-family:inherit}
.bar{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd}"""


def _scores(row_id: str, letter: str, criteria: list[str]) -> str:
    parts = []
    for criterion in criteria:
        col = f"score_{letter}_{criterion}"
        options = "".join(f'<option value="{v}">{v}</option>' for v in range(1, 6))
        parts.append(f'<label>{html.escape(criterion)} <select name="{row_id}|{col}" data-col="{col}">'
                     f'<option value="">–</option>{options}</select></label> ')
    return "".join(parts)


def _row(row: dict[str, Any], letters: list[str], criteria: list[str]) -> str:
    row_id = row["row_id"]
    answers = "".join(
        f'<div class="answer"><h3>Response {p}</h3><pre>{html.escape(str(row[f"response_{p}"]))}</pre>'
        f"{_scores(row_id, p, criteria)}</div>" for p in letters)
    choices = "".join(f'<label><input type="radio" name="{row_id}|preference" data-col="preference" value="{c}"> {c}'
                      "</label> " for c in [*letters, "tie"])
    return (f'<div class="row" id="{row_id}"><h2>{row_id}</h2><div class="prompt">{html.escape(row["prompt"])}</div>'
            f'<div class="answers" style="grid-template-columns:repeat({len(letters)},1fr)">{answers}</div>'
            f"<p><b>Better response:</b> {choices}</p>"
            f'<label>comment <input name="{row_id}|comment" data-col="comment" size="60"></label></div>')


def render_sheet_html(sheet_id: str, rows: list[dict[str, Any]], letters: list[str], criteria: list[str]) -> str:
    meta = {"sheet_id": sheet_id, "rows": [r["row_id"] for r in rows],
            "columns": ["sheet_id", *rating_columns(len(letters), criteria)]}
    meta_json = json.dumps(meta).replace("</", "<\\/")
    body = "".join(_row(row, letters, criteria) for row in rows)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Human evaluation {sheet_id}</title>"
            f"<style>{STYLE}{EXTRA_STYLE}</style></head><body><h1>Human evaluation</h1>"
            "<p>For each prompt, read every response, pick the better one (or tie) and score each response "
            f"from 1 (poor) to 5 (excellent) on: {html.escape(', '.join(criteria))}. The responses come from "
            "different systems in a random order.</p>"
            '<div class="bar"><label>Your name <input id="rater"></label> <button onclick="download()">'
            'Download ratings</button> <span id="progress"></span></div>'
            f"{body}<script type=\"application/json\" id=\"sheet-meta\">{meta_json}</script>"
            f"<script>{SCRIPT}</script></body></html>")
