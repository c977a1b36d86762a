"""Building blocks for the tuneserve Grafana dashboards, as plain dicts in Grafana's
dashboard JSON model (schemaVersion 39, Grafana 10/11): queries, panels, rows, template
variables, and a grid that places panels left to right.

Used by `deploy/grafana/generate.py`; not a package module (the generator puts this
directory on `sys.path`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
GRID_WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


def q(expr: str, legend: str = "", instant: bool = False) -> Query:
    return Query(expr, legend, instant)


def series(metric: str, selector: str = "") -> str:
    """`metric{selector}`, or the bare name when there is no selector."""
    return f"{metric}{{{selector}}}" if selector else metric


def rate(metric: str, selector: str = "", by: str = "") -> str:
    """`sum [by (...)] (rate(metric{selector}[$__rate_interval]))`."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({series(metric, selector)}[{RATE}]))"


def quantile(phi: float, histogram: str, selector: str = "", by: str = "") -> str:
    """The phi-quantile of a histogram over the rate interval, optionally per label set."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({phi}, sum by ({labels}) (rate({series(histogram + '_bucket', selector)}[{RATE}])))"


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator}\n/\n{denominator}"


def fraction(part: str, whole: str) -> str:
    """`part / whole` where both are sums by the same labels: label sets that had no `part` event
    (no server error yet, no cache hit) read 0, not "No data"."""
    return ratio(f"({part}\nor\n{whole} * 0)", whole)


def quantile_queries(histogram: str, selector: str = "", by: str = "", phis=(0.5, 0.95, 0.99)) -> list[Query]:
    prefix = f"{{{{{by}}}}} " if by else ""
    return [q(quantile(phi, histogram, selector, by), f"{prefix}p{round(phi * 100)}") for phi in phis]


def _targets(queries: list[Query]) -> list[dict]:
    targets = []
    for index, query in enumerate(queries):
        target = {"datasource": DATASOURCE, "refId": chr(ord("A") + index), "expr": query.expr,
                  "legendFormat": query.legend or "__auto", "range": not query.instant, "instant": query.instant}
        if query.instant:
            target["format"] = "table"
        targets.append(target)
    return targets


def _thresholds(steps: list[tuple[float | None, str]]) -> dict:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


@dataclass
class Panel:
    """One visualisation; `kind` is the Grafana panel type."""

    title: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12
    height: int = 8
    thresholds: list[tuple[float | None, str]] = field(default_factory=lambda: [(None, "green")])
    show_thresholds: bool = False
    stack: bool = False
    min: float | None = None
    max: float | None = None

    def to_dict(self, panel_id: int, x: int, y: int) -> dict:
        defaults: dict = {"unit": self.unit, "thresholds": _thresholds(self.thresholds)}
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                "stacking": {"mode": "normal" if self.stack else "none", "group": "A"},
                "thresholdsStyle": {"mode": "dashed" if self.show_thresholds else "off"},
            }
            options: dict = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
                             "tooltip": {"mode": "multi", "sort": "desc"}}
        elif self.kind == "stat":
            defaults["color"] = {"mode": "thresholds"}
            options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "colorMode": "background", "graphMode": "area", "textMode": "auto"}
        elif self.kind == "table":
            options = {"showHeader": True, "sortBy": [{"displayName": "Value", "desc": True}]}
        else:
            raise ValueError(f"unknown panel kind {self.kind!r}")
        panel = {"id": panel_id, "type": self.kind, "title": self.title, "datasource": DATASOURCE,
                 "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
                 "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
                 "targets": _targets(self.queries)}
        if self.description:
            panel["description"] = self.description
        if self.kind == "table":
            panel["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
        return panel


@dataclass(frozen=True)
class Row:
    title: str


def stat(title: str, expr: str, unit: str = "short", thresholds=None, description: str = "") -> Panel:
    return Panel(title, [q(expr)], unit=unit, kind="stat", width=6, height=4, description=description,
                 thresholds=thresholds or [(None, "green")])


def table(title: str, expr: str, description: str = "", width: int = 12) -> Panel:
    return Panel(title, [q(expr, instant=True)], kind="table", width=width, description=description)


def layout(items: list[Panel | Row]) -> list[dict]:
    """Place panels left to right, wrapping at the grid width; a Row starts a new line."""
    panels: list[dict] = []
    x = y = line_height = 0
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row):
            y += line_height
            panels.append({"id": panel_id, "type": "row", "title": item.title, "collapsed": False,
                           "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y}, "panels": []})
            x, y, line_height = 0, y + 1, 0
            continue
        if x + item.width > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        panels.append(item.to_dict(panel_id, x, y))
        x += item.width
        line_height = max(line_height, item.height)
    return panels


def datasource_variable() -> dict:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {"text": "Prometheus", "value": "tuneserve-prometheus"}, "hide": 0, "refresh": 1,
            "regex": "", "options": []}


def label_variable(name: str, metric: str, label: str, description: str) -> dict:
    query = f"label_values({metric}, {label})"
    return {"name": name, "label": label, "type": "query", "description": description,
            "datasource": DATASOURCE, "query": {"query": query, "refId": "StandardVariableQuery"},
            "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}, "sort": 1, "hide": 0, "options": [], "regex": ""}


def dashboard(uid: str, title: str, description: str, items: list[Panel | Row], variables=()) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["tuneserve"],
        "timezone": "browser", "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": "now-3h", "to": "now"},
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "tuneserve", "type": "dashboards", "tags": ["tuneserve"], "asDropdown": True,
                   "includeVars": True, "keepTime": True}],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": layout(items),
    }


def panel_exprs(board: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query target of a dashboard, rows included."""
    found = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found.extend((inner["title"], t["expr"]) for t in inner.get("targets", []))
    return found
