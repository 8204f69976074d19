"""Keeps the README's example output of `make demo` honest (part of `make test`).

    PYTHONPATH=scripts python3 -m ops.demo_readme --check        # make test: offline, < 1 s
    PYTHONPATH=scripts python3 -m ops.demo_readme --write        # after a real `make demo`

The README shows what `make demo` prints at the end: the counts scripts/ops/demo_summary.py
prints from the services' /metrics, then scripts/demo's "where to look". `--check` finds that
block (the README's first ```text block starting with `==> receiver`) and verifies

  format      the counts are exactly what demo_summary prints for those numbers today (its
              section titles, headings, keys, order and alignment: demo_summary's own formatter
              is run on the README's numbers), and each line of "where to look" other than
              `...` is printed by scripts/demo;
  arithmetic  receiver: received = acked + refused (every position received is answered once);
              processor: valid + invalid + duplicates = acked (each acked position is judged once:
              nothing else writes the raw topic in the demo); tracker: stored = valid (it stores
              every valid position once); vehicles on the map = scripts/demo's DEMO_VEHICLES;
              every refusal reason is a receiver reason and every invalid reason a processor one
              (docs/wire-format.md, "Reason codes");
  scale       the README's sentence about the fleet names scripts/demo's defaults (vehicles,
              duration), and `received` is within 20% of vehicles x duration / interval (the
              simulator's --interval in scripts/demo).

`--write` puts the counts of the last real run in the block: the metrics scripts/demo saved in
.local/ (receiver.metrics, processor.metrics, tracker.metrics), formatted by demo_summary, after
the same checks (a run whose numbers do not add up, e.g. a tracker still catching up, is
refused). `make demo-readme` runs the demo with its defaults and then this.
"""
import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

from ops import demo_summary, promtext

ROOT = Path(__file__).resolve().parent.parent.parent
START = "==> receiver"
WHERE = "==> where to look"
RECEIVED = "fleetstream_receiver_positions_received_total"
ACKED = "fleetstream_receiver_positions_acked_total"
REFUSED = "fleetstream_receiver_positions_refused_total"
VALID = "fleetstream_processor_positions_valid_total"
INVALID = "fleetstream_processor_positions_invalid_total"
DUPLICATES = "fleetstream_processor_duplicates_total"
STORED = "fleetstream_tracker_positions_written_total"
VEHICLES = "fleetstream_tracker_vehicles"
# How far `received` may be from vehicles x duration / interval: faults and resends add a few
# percent, a busy machine's simulator falls a little behind.
SCALE_TOLERANCE = 0.20


class Block(NamedTuple):
    """The README's demo output: where it is (line indices of the text inside the fence) and its
    two parts."""
    start: int
    end: int
    counts: List[str]
    where: List[str]


class Defaults(NamedTuple):
    """What scripts/demo runs without environment: the fleet and its report interval."""
    vehicles: int
    duration_s: float
    interval_s: float


def find_block(readme: str) -> Block:
    """The first ```text block of README whose first line is `==> receiver`."""
    lines = readme.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```text" and i + 1 < len(lines) and lines[i + 1] == START:
            end = i + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                raise ValueError(f"README line {i + 1}: the demo output's ```text block is not closed")
            body = lines[i + 1:end]
            split = body.index(WHERE) if WHERE in body else len(body)
            return Block(i + 1, end, body[:split], body[split:])
        i += 1
    raise ValueError(f"README has no ```text block starting with {START!r} (the output of make demo)")


ROW = re.compile(r"^      (\S+)\s+(-?\d+)$")


def parse_counts(lines: List[str]) -> Dict[str, List[Tuple[str, str, float]]]:
    """{service: [(heading, key, value)]} from the counts part of the block, in order."""
    out: Dict[str, List[Tuple[str, str, float]]] = {}
    service: Optional[str] = None
    heading: Optional[str] = None
    for n, line in enumerate(lines, 1):
        if line.startswith("==> "):
            service, heading = line[4:].strip(), None
            out.setdefault(service, [])
        elif line.startswith("      "):
            m = ROW.match(line)
            if not m or service is None or heading is None:
                raise ValueError(f"demo output line {n}: {line!r} is not `      KEY   NUMBER` under a heading")
            out[service].append((heading, m.group(1), float(m.group(2))))
        elif line.startswith("    ") and line.strip():
            if service is None:
                raise ValueError(f"demo output line {n}: {line!r} comes before any `==> service` line")
            heading = line.strip()
        else:
            raise ValueError(f"demo output line {n}: {line!r} is neither a section, a heading nor a count")
    return out


def samples_of(counts: Dict[str, List[Tuple[str, str, float]]]) -> Dict[str, List[promtext.Sample]]:
    """The /metrics samples that would make demo_summary print these counts. A service or a
    heading demo_summary does not print is an error naming what it prints instead."""
    sections = dict(demo_summary.SECTIONS)
    out: Dict[str, List[promtext.Sample]] = {}
    for service, rows in counts.items():
        if service not in sections:
            raise ValueError(f"section `==> {service}` is not one demo_summary prints ({', '.join(sections)})")
        items = {title: (metric, label) for title, metric, label in sections[service]}
        samples = out.setdefault(service, [])
        for heading, key, value in rows:
            if heading not in items:
                raise ValueError(f"`{heading}` (under {service}) is not a heading demo_summary prints: "
                                 + "; ".join(items))
            metric, label = items[heading]
            if label is None:
                if key != "total":
                    raise ValueError(f"`{heading}` (under {service}) has one row, `total`, not {key!r}")
                samples.append(promtext.Sample(metric, {}, value))
            else:
                samples.append(promtext.Sample(metric, {label: "" if key == "(none)" else key}, value))
    return out


def check_format(block: Block, demo_script: str) -> List[str]:
    """Problems with the block's format: the counts differ from demo_summary's rendering of
    their own numbers, or "where to look" shows a line scripts/demo does not print."""
    problems = []
    try:
        rendered = demo_summary.summary(samples_of(parse_counts(block.counts))).splitlines()
    except ValueError as e:
        return [str(e)]
    if rendered != block.counts:
        diff = "\n".join(difflib.unified_diff(block.counts, rendered, "README", "demo_summary", lineterm=""))
        problems.append("the counts are not what demo_summary prints for these numbers:\n" + diff)
    for line in block.where[1:]:
        if line.strip() != "..." and line not in demo_script.splitlines():
            problems.append(f"`{line.strip()}` (where to look) is not a line scripts/demo prints")
    return problems


def reason_stages(wire_format: str) -> Dict[str, set]:
    """{reason code: {stages}} from the table of docs/wire-format.md's "Reason codes"."""
    stages = {}
    for m in re.finditer(r"^\| `([a-z_]+)` \| ([a-z, ]+) \|", wire_format, re.M):
        stages[m.group(1)] = {s.strip() for s in m.group(2).split(",")}
    return stages


def check_arithmetic(samples: Dict[str, List[promtext.Sample]], defaults: Defaults, stages: Dict[str, set]) -> List[str]:
    """Problems with the numbers: the equalities of the module's docstring."""
    def total(service, metric):
        return promtext.total(samples.get(service, []), metric) or 0.0

    received, acked, refused = total("receiver", RECEIVED), total("receiver", ACKED), total("receiver", REFUSED)
    valid, invalid, dups = total("processor", VALID), total("processor", INVALID), total("processor", DUPLICATES)
    stored, vehicles = total("tracker", STORED), total("tracker", VEHICLES)
    problems = []
    if received != acked + refused:
        problems.append(f"receiver: received {received:.0f} != acked {acked:.0f} + refused {refused:.0f}")
    if valid + invalid + dups != acked:
        problems.append(f"processor: valid {valid:.0f} + invalid {invalid:.0f} + duplicates {dups:.0f} "
                        f"= {valid + invalid + dups:.0f}, not the receiver's acked {acked:.0f}")
    if stored != valid:
        problems.append(f"tracker: stored {stored:.0f} != the processor's valid {valid:.0f}")
    if vehicles != defaults.vehicles:
        problems.append(f"tracker: {vehicles:.0f} vehicles on the map, but scripts/demo simulates {defaults.vehicles}")
    for service, metric in (("receiver", REFUSED), ("processor", INVALID)):
        for reason in promtext.by_label(samples.get(service, []), metric, "reason"):
            if service not in stages.get(reason, set()):
                problems.append(f"{service}: `{reason}` is not a {service} reason code (docs/wire-format.md)")
    expected = defaults.vehicles * defaults.duration_s / defaults.interval_s
    if abs(received - expected) > SCALE_TOLERANCE * expected:
        problems.append(f"receiver: received {received:.0f}, but {defaults.vehicles} vehicles every "
                        f"{defaults.interval_s:g} s for {defaults.duration_s:g} s send about {expected:.0f}")
    return problems


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if not m:
        raise ValueError(f"duration {text!r}: expected e.g. 500ms, 30s or 2m")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def demo_defaults(demo_script: str) -> Defaults:
    """scripts/demo's fleet without environment: DEMO_VEHICLES, DEMO_DURATION and the
    simulator's --interval."""
    def find(pattern, what):
        m = re.search(pattern, demo_script)
        if not m:
            raise ValueError(f"scripts/demo: cannot find {what} ({pattern})")
        return m.group(1)
    return Defaults(
        vehicles=int(find(r"\$\{DEMO_VEHICLES:-(\d+)\}", "the default of DEMO_VEHICLES")),
        duration_s=seconds(find(r"\$\{DEMO_DURATION:-([0-9.]+m?s?)\}", "the default of DEMO_DURATION")),
        interval_s=seconds(find(r"obu-sim\b[^\n]*--interval ([0-9.]+m?s?)", "the simulator's --interval")),
    )


PROSE = re.compile(r"and (\d+) simulated vehicles[^.]*? for (\d+) s\b")


def check_prose(readme: str, defaults: Defaults) -> List[str]:
    """The README's sentence introducing the output names the demo's defaults."""
    m = PROSE.search(re.sub(r"\s+", " ", readme))
    if not m:
        return ["README: no sentence `... and N simulated vehicles ... for D s` introduces the demo output"]
    problems = []
    if int(m.group(1)) != defaults.vehicles:
        problems.append(f"README says {m.group(1)} simulated vehicles; scripts/demo's default is {defaults.vehicles}")
    if float(m.group(2)) != defaults.duration_s:
        problems.append(f"README says {m.group(2)} s; scripts/demo's default DEMO_DURATION is {defaults.duration_s:g} s")
    return problems


def check(readme: str, demo_script: str, wire_format: str) -> List[str]:
    """Every problem of the README's demo output (an empty list: it is honest)."""
    try:
        block = find_block(readme)
        defaults = demo_defaults(demo_script)
    except ValueError as e:
        return [str(e)]
    problems = check_format(block, demo_script)
    if problems:
        return problems
    samples = samples_of(parse_counts(block.counts))
    return check_prose(readme, defaults) + check_arithmetic(samples, defaults, reason_stages(wire_format))


def rewrite(readme: str, samples: Dict[str, List[promtext.Sample]]) -> str:
    """README with the block's counts replaced by demo_summary's rendering of SAMPLES."""
    block = find_block(readme)
    lines = readme.splitlines()
    counts = demo_summary.summary(samples).splitlines()
    out = lines[:block.start] + counts + block.where + lines[block.end:]
    return "\n".join(out) + ("\n" if readme.endswith("\n") else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="demo_readme", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="verify the README's demo output (make test)")
    mode.add_argument("--write", action="store_true", help="put the last demo run's counts (from --metrics-dir) in the README")
    ap.add_argument("--root", type=Path, default=ROOT, help="the repository (README.md, scripts/demo, docs/wire-format.md)")
    ap.add_argument("--metrics-dir", type=Path, help="--write: where scripts/demo saved the metrics (default ROOT/.local)")
    args = ap.parse_args(argv)
    readme_path = args.root / "README.md"
    readme = readme_path.read_text()
    demo_script = (args.root / "scripts" / "demo").read_text()
    wire_format = (args.root / "docs" / "wire-format.md").read_text()
    if args.write:
        directory = args.metrics_dir or args.root / ".local"
        try:
            samples = {s: promtext.read(directory / f"{s}.metrics") for s, _ in demo_summary.SECTIONS}
        except OSError as e:
            print(f"demo_readme: {e} (run make demo first)", file=sys.stderr)
            return 1
        readme = rewrite(readme, samples)
    problems = check(readme, demo_script, wire_format)
    if problems:
        print("demo_readme: the README's output of make demo is not honest:", file=sys.stderr)
        for p in problems:
            print("  - " + p.replace("\n", "\n    "), file=sys.stderr)
        return 1
    if args.write:
        readme_path.write_text(readme)
        print(f"demo_readme: {readme_path} updated from {directory}")
    else:
        print("demo_readme: the README's output of make demo adds up and matches demo_summary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
