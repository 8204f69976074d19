"""The Grafana dashboards (grafana/dashboards/*.json) and the PromQL in them and in the alerts."""
import json
import os
import re

# Grafana variables and what they stand for in check-ops (scrape interval 1 s).
GRAFANA_VARS = {"__rate_interval": "20s", "__interval": "5s", "__range": "5m", "instance": ".*"}
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                   "bool", "offset", "inf", "nan", "atan2", "start", "end"}
SYNTHETIC = {"up"}  # series Prometheus makes itself


def dashboards(root):
    """(file name, dashboard) of every dashboard, by file name."""
    d = os.path.join(root, "grafana/dashboards")
    for f in sorted(os.listdir(d)):
        if f.endswith(".json"):
            with open(os.path.join(d, f)) as fh:
                yield f, json.load(fh)


def all_panels(panels):
    """Every panel, those nested in rows included."""
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def dashboard_queries(dash):
    """(panel title, expr, datasource) of every query, template variables included."""
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q or "")
            yield f"variable ${v['name']}", (m.group(1) if m else q), v.get("datasource")
    for p in all_panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            yield p.get("title", "?"), t.get("expr", ""), t.get("datasource") or p.get("datasource")


def substitute(expr, **override):
    """The expression with Grafana's variables ($x, ${x}) replaced; ValueError for unknown ones."""
    values = {**GRAFANA_VARS, **override}

    def var(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise ValueError(f"unknown dashboard variable ${name}")
        return values[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, expr)


def metric_names(expr):
    """Metric names an expression selects (a small PromQL lexer: good for the queries here)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if m.start() and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # 1e3, 5m
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group(0))
    return names
