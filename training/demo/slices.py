"""The small, real slices `tuneserve demo` trains on, written as files the trainer reads.

    data = find_shared_data()                          # ../shared/data when present, else None
    sft = instruction_slice(data, out / "sft.jsonl", rows=160)
    intents = intent_slice(data, out / "intents.csv")  # .path, .question, .expected

With the shared data: short rows (under 200 characters) of `alpaca_en_demo`, and twelve
intents of `banking77` (about 1,200 rows). Without it: the shipped synthetic instructions
and support tickets. Each slice is small enough to train in a minute or two on two cores.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SHORT_ROW_CHARS = 200
BANKING_INTENTS = (
    "lost_or_stolen_card", "card_arrival", "activate_my_card", "change_pin", "exchange_rate",
    "declined_card_payment", "cash_withdrawal_charge", "transfer_not_received_by_recipient",
    "top_up_failed", "balance_not_updated_after_bank_transfer", "terminate_account", "pin_blocked",
)
TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class IntentSlice:
    path: Path
    source: str
    labels: tuple[str, ...]
    question: str  # a sentence the classifier should get right
    expected: str


def bundled(name: str) -> Path:
    return Path(str(resources.files("training.demo").joinpath(name)))


def find_shared_data(explicit: Path | None = None) -> Path | None:
    """`explicit`, else ../shared/data beside the working directory or beside this checkout."""
    candidates = [explicit] if explicit else [Path.cwd().parent / "shared" / "data",
                                              Path(__file__).resolve().parents[2].parent / "shared" / "data"]
    return next((p for p in candidates if p and p.is_dir()), None)


def instruction_slice(shared: Path | None, out: Path, rows: int) -> tuple[Path, str]:
    """The first `rows` short instruction rows as JSONL; returns (path, where they came from)."""
    alpaca = shared / "alpaca_en_demo" / "alpaca_en_demo.json" if shared else None
    if alpaca and alpaca.is_file():
        source, records = str(alpaca), json.loads(alpaca.read_text(encoding="utf-8"))
    else:
        source = str(bundled("instructions.jsonl"))
        records = [json.loads(line) for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
    short = [r for r in records if sum(len(r.get(k) or "") for k in ("instruction", "input", "output")) < SHORT_ROW_CHARS]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({k: r.get(k) or "" for k in ("instruction", "input", "output")}) + "\n"
                           for r in short[:rows]), encoding="utf-8")
    return out, source


def _write_csv(out: Path, rows: list[tuple[str, str]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def intent_slice(shared: Path | None, out: Path) -> IntentSlice:
    """Banking77 rows of BANKING_INTENTS, else the shipped tickets (HTML stripped, empty rows dropped)."""
    banking = shared / "banking77" / "train.csv" if shared else None
    if banking and banking.is_file():
        with banking.open(newline="", encoding="utf-8") as handle:
            rows = [(r["text"], r["category"]) for r in csv.DictReader(handle) if r["category"] in BANKING_INTENTS]
        _write_csv(out, rows)
        return IntentSlice(out, str(banking), BANKING_INTENTS, "I lost my card yesterday", "lost_or_stolen_card")
    tickets = bundled("demo_tickets.csv")
    with tickets.open(newline="", encoding="utf-8") as handle:
        rows = [(TAG.sub("", r["text"]).strip(), r["category"].strip()) for r in csv.DictReader(handle)]
    rows = [(text, label) for text, label in rows if text and label]
    _write_csv(out, rows)
    return IntentSlice(out, str(tickets), tuple(sorted({label for _, label in rows})),
                       "My parcel has still not arrived", "shipping")
