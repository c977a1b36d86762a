"""Small built-in word lists for offline augmentation: English synonyms and an English-German lexicon.

Enough for EDA synonym replacement/insertion and the offline back-translation round trip in
tests and demos; pass `augmentation.synonyms_file` (JSON `{word: [synonyms]}`) for more.

    SYNONYMS["buy"]      # ["purchase", "get"]
    EN_DE["card"]        # "karte"
"""

from __future__ import annotations

import json
from pathlib import Path

from training.artifact.errors import ConfigError

_SYNONYM_LINES = """
buy purchase get|get obtain receive|need require want|want wish desire|help assist support
problem issue trouble|issue problem|fast quick rapid|quick fast speedy|slow sluggish delayed
big large huge|small little tiny|good fine great|bad poor awful|happy glad pleased|sad unhappy upset
begin start commence|start begin launch|end finish stop|stop halt cease|make create build|use utilize employ
show display reveal|tell inform notify|ask request inquire|answer reply respond|find locate discover
change modify alter|fix repair resolve|send transfer transmit|transfer send move|pay settle remit
money funds cash|payment transaction charge|charge fee cost|fee charge cost|account profile
card debit_card|cancel revoke terminate|close shut|open unlock|check verify confirm|verify confirm check
arrive come reach|arrived came|wait hold|still yet|why how_come|lost missing misplaced|missing lost absent
received got obtained|recieve receive|refund reimbursement repayment|wrong incorrect mistaken|correct right accurate
new fresh recent|old previous former|quickly rapidly swiftly|easily simply|please kindly|thanks thank_you
explain describe clarify|write compose draft|list enumerate|give provide offer|provide give supply
word term|sentence phrase|number figure|colour color hue|color colour hue|answer response reply
capital chief|country nation|city town|house home|car vehicle automobile|child kid youngster
""".strip()


def _parse_synonyms(text: str) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for entry in text.replace("\n", "|").split("|"):
        words = [w.replace("_", " ") for w in entry.split()]
        if len(words) >= 2:
            table.setdefault(words[0], []).extend(w for w in words[1:] if w not in table.get(words[0], []))
    return table


SYNONYMS: dict[str, list[str]] = _parse_synonyms(_SYNONYM_LINES)

_LEXICON = """
i ich|you du|we wir|my mein|your dein|is ist|are sind|the die|a ein|an ein|and und|or oder|not nicht
to zu|of von|in in|on auf|for für|with mit|my mein|how wie|what was|why warum|when wann|where wo
can kann|do tue|have habe|has hat|need brauche|want will|get bekomme|buy kaufe|pay zahle|send sende
card karte|money geld|account konto|bank bank|payment zahlung|transfer überweisung|fee gebühr|refund erstattung
still noch|yet noch|arrived angekommen|received erhalten|lost verloren|new neu|old alt|fast schnell|quick schnell
problem problem|issue problem|help hilfe|please bitte|thanks danke|wrong falsch|change ändere|cancel storniere
write schreibe|give gib|explain erkläre|list liste|word wort|sentence satz|number zahl|colour farbe|color farbe
big groß|small klein|good gut|bad schlecht|happy froh|sad traurig|house haus|car auto|city stadt|country land
""".strip()

EN_DE: dict[str, str] = {}
DE_EN: dict[str, str] = {}
for _entry in _LEXICON.replace("\n", "|").split("|"):
    _en, _de = _entry.split()
    EN_DE.setdefault(_en, _de)
    DE_EN.setdefault(_de, _en)
# The way back picks a different English word where German merges two, so the round trip paraphrases.
DE_EN.update({"problem": "issue", "noch": "still", "schnell": "quick", "farbe": "colour"})


def load_synonyms(path: str | None) -> dict[str, list[str]]:
    if path is None:
        return SYNONYMS
    try:
        extra = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read synonyms file {path}: {exc}", "give a JSON object {word: [synonyms]}") from None
    if not isinstance(extra, dict) or not all(isinstance(v, list) for v in extra.values()):
        raise ConfigError(f"synonyms file {path} must map words to lists of synonyms", "use {\"buy\": [\"purchase\"]}")
    merged = {k: list(v) for k, v in SYNONYMS.items()}
    for word, syns in extra.items():
        merged.setdefault(word.lower(), []).extend(str(s) for s in syns)
    return merged
