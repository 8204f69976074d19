"""Prometheus' text exposition format (version 0.0.4): the one parser the scripts share.

scripts/check-ops, scripts/bench and scripts/demo read the services' /metrics with it:

    samples = promtext.scrape("http://127.0.0.1:30000/metrics")      # None if unreachable
    promtext.total(samples, "fleetstream_receiver_positions_acked_total")
    promtext.by_label(samples, "fleetstream_receiver_positions_refused_total", "reason")
"""
import math
import re
import urllib.request
from typing import Dict, Iterable, List, NamedTuple, Optional

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class Sample(NamedTuple):
    name: str
    labels: Dict[str, str]
    value: float


def parse_value(text: str) -> float:
    """A sample value: a Go float, including NaN, +Inf and -Inf."""
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    return float(text)


def _labels(line: str, i: int):
    """Parses `{a="x",b="y"}` starting at line[i] == '{'; returns (labels, index after '}')."""
    labels = {}
    i += 1
    while True:
        while i < len(line) and line[i] in " \t,":
            i += 1
        if i < len(line) and line[i] == "}":
            return labels, i + 1
        m = _LABEL_NAME.match(line, i)
        if not m:
            raise ValueError(f"bad label name at column {i}")
        name, i = m.group(0), m.end()
        while i < len(line) and line[i] in " \t":
            i += 1
        if line[i:i + 2] != '="':
            raise ValueError(f"label {name} without a quoted value")
        i += 2
        value = []
        while True:
            if i >= len(line):
                raise ValueError(f"unterminated value of label {name}")
            c = line[i]
            if c == "\\" and i + 1 < len(line):
                value.append(_ESCAPES.get(line[i + 1], "\\" + line[i + 1]))
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                value.append(c)
                i += 1
        labels[name] = "".join(value)


def parse_line(line: str) -> Optional[Sample]:
    """One line: a Sample, or None for a comment or a blank line. Raises ValueError on junk."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    m = _NAME.match(line)
    if not m:
        raise ValueError(f"no metric name: {line!r}")
    name, i = m.group(0), m.end()
    labels: Dict[str, str] = {}
    if i < len(line) and line[i] == "{":
        try:
            labels, i = _labels(line, i)
        except ValueError as e:
            raise ValueError(f"{e}: {line!r}") from None
    rest = line[i:].split()
    if not rest or len(rest) > 2:  # value, then an optional timestamp
        raise ValueError(f"no value: {line!r}")
    return Sample(name, labels, parse_value(rest[0]))


def parse(text: str) -> List[Sample]:
    """Every sample of an exposition, in order."""
    return [s for s in map(parse_line, text.splitlines()) if s is not None]


def select(samples: Iterable[Sample], name: str, labels: Optional[Dict[str, str]] = None) -> List[Sample]:
    """The samples of metric `name` (exactly) whose labels include `labels`."""
    want = (labels or {}).items()
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in want)]


def total(samples: Iterable[Sample], name: str, labels: Optional[Dict[str, str]] = None) -> Optional[float]:
    """The sum of the selected samples, or None when the metric has none."""
    chosen = select(samples, name, labels)
    return sum(s.value for s in chosen) if chosen else None


def by_label(samples: Iterable[Sample], name: str, label: str) -> Dict[str, float]:
    """Sums of metric `name` grouped by the value of `label` ("" where a sample lacks it)."""
    out: Dict[str, float] = {}
    for s in select(samples, name):
        key = s.labels.get(label, "")
        out[key] = out.get(key, 0.0) + s.value
    return out


def names(samples: Iterable[Sample]) -> set:
    """The metric names of the samples (histograms show as their _bucket, _sum, _count)."""
    return {s.name for s in samples}


def scrape(url: str, timeout: float = 2.0) -> Optional[List[Sample]]:
    """The samples served at `url`, or None when it cannot be fetched."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    return parse(text)


def read(path) -> List[Sample]:
    """The samples of a saved exposition (an empty file gives none)."""
    with open(path) as f:
        return parse(f.read())
