"""The counts scripts/demo prints at the end: what flowed where, from the services' /metrics.

    PYTHONPATH=scripts python3 -m ops.demo_summary --receiver FILE --processor FILE --tracker FILE

Each argument is a saved exposition (an empty file: the service did not answer).
"""
import argparse
import sys

from ops import promtext

# (service, [(heading, metric, label to group by or None)])
SECTIONS = [
    ("receiver", [
        ("positions received", "fleetstream_receiver_positions_received_total", None),
        ("acked (durably in Kafka)", "fleetstream_receiver_positions_acked_total", None),
        ("refused, by reason (kept in gpscoords-dlq)", "fleetstream_receiver_positions_refused_total", "reason"),
    ]),
    ("processor", [
        ("valid -> positions, vehicle-latest", "fleetstream_processor_positions_valid_total", None),
        ("invalid -> gpscoords-dlq, by reason", "fleetstream_processor_positions_invalid_total", "reason"),
        ("duplicates dropped", "fleetstream_processor_duplicates_total", None),
    ]),
    ("tracker", [
        ("positions stored (history)", "fleetstream_tracker_positions_written_total", None),
        ("vehicles on the map", "fleetstream_tracker_vehicles", None),
    ]),
]


def rows(samples, metric, label):
    """(key, value) lines of one heading: the total, or with a label the sum for every value of
    it that occurred (a reason that never happened is not listed), sorted."""
    if not label:
        return [("total", promtext.total(samples, metric) or 0.0)]
    return sorted((k or "(none)", v) for k, v in promtext.by_label(samples, metric, label).items() if v != 0)


def summary(samples_by_service, heading=lambda s: f"==> {s}"):
    lines = []
    for service, items in SECTIONS:
        samples = samples_by_service.get(service) or []
        lines.append(heading(service))
        for title, metric, label in items:
            lines.append(f"    {title}")
            lines += [f"      {key:<24} {value:.0f}" for key, value in rows(samples, metric, label)]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="demo_summary", description=__doc__.splitlines()[0])
    for service, _ in SECTIONS:
        ap.add_argument(f"--{service}", required=True, help=f"the {service}'s saved /metrics")
    ap.add_argument("--bold", action="store_true", help="headings in bold (a terminal)")
    args = ap.parse_args(argv)
    samples = {s: promtext.read(getattr(args, s)) for s, _ in SECTIONS}
    bold = (lambda s: f"\033[1m==> {s}\033[0m") if args.bold else (lambda s: f"==> {s}")
    print(summary(samples, bold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
