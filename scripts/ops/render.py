"""Draws the overview dashboard's panels from a scripts/check-ops run's Prometheus (not a
Grafana screenshot): CHECK_OPS_RENDER=FILE.png scripts/check-ops. Needs matplotlib, which
check-ops installs into its work directory's venv.

    PYTHONPATH=scripts python -m ops.render --root . --work DIR --prometheus HOST:PORT --out FILE.png
"""
import argparse
import json
import os
import re
import sys
import urllib.parse
import urllib.request

from ops.check_ops import query
from ops.dashboards import all_panels, dashboards, substitute


def render(args):
    """Draws the overview dashboard's panels from the run's Prometheus (not a Grafana screenshot)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    work, prom = args.work, args.prometheus
    t0 = float(open(os.path.join(work, "t.start")).read())
    t1 = float(open(os.path.join(work, "t.end")).read())
    t_out0 = float(open(os.path.join(work, "t.outage_start")).read())
    # Shaded: from the stop until the broker answered again (its start-up included).
    back = os.path.join(work, "t.broker_back")
    t_out1 = float(open(back if os.path.exists(back) else os.path.join(work, "t.outage_end")).read())
    dash = dict(dashboards(args.root))["pipeline-overview.json"]
    panels = [p for p in all_panels(dash["panels"]) if p.get("type") in ("timeseries", "stat")]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) + 1  # + a footer
    fig = plt.figure(figsize=(20, rows * 0.42))
    fig.patch.set_facecolor("#111217")

    def legend(fmt, metric):
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) or "value"

    def fmt_value(v, unit):
        if v != v:
            return "NaN"
        if unit == "percentunit":
            return f"{v * 100:.1f}%"
        if unit == "s":
            return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
        if unit == "suffix: /s":
            return f"{v:.0f}/s"
        return f"{v:.0f}"

    for p in panels:
        g = p["gridPos"]
        left, bottom = g["x"] / 24, 1 - (g["y"] + g["h"]) / rows
        w, h = g["w"] / 24, g["h"] / rows
        if p["type"] == "stat":
            ax = fig.add_axes([left + 0.004, bottom + 0.006, w - 0.008, h - 0.026])
        else:
            ax = fig.add_axes([left + 0.032, bottom + 0.026, w - 0.04, h - 0.05])
        ax.set_facecolor("#181b1f")
        for s in ax.spines.values():
            s.set_color("#2c3235")
        ax.tick_params(colors="#9fa7b3", labelsize=7)
        ax.set_title(p["title"], color="#d8d9da", fontsize=9, loc="left")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if p["type"] == "stat":
            ax.set_xticks([]); ax.set_yticks([])
            mappings = p["fieldConfig"]["defaults"].get("mappings", [])
            texts = []
            for t in p["targets"]:
                for r in query(prom, substitute(t["expr"]), t1):
                    v = float(r["value"][1])
                    label = fmt_value(v, unit)
                    for mp in mappings:
                        opt = mp.get("options", {}).get(str(int(v)) if v == v else "")
                        if opt:
                            label = opt["text"]
                    texts.append((legend(t.get("legendFormat", ""), r["metric"]), label))
            if len(texts) == 1:
                ax.text(0.5, 0.4, texts[0][1], color="#73bf69", fontsize=18, ha="center", va="center", transform=ax.transAxes)
            else:
                for i, (name, label) in enumerate(texts):
                    y = 0.85 - i * 0.8 / max(len(texts), 1)
                    colour = "#73bf69" if label == "UP" else "#f2495c"
                    ax.add_patch(Rectangle((0.03, y - 0.07), 0.94, 0.14, color=colour, alpha=0.25, transform=ax.transAxes))
                    ax.text(0.06, y, name, color="#d8d9da", fontsize=7, va="center", transform=ax.transAxes)
                    ax.text(0.94, y, label, color=colour, fontsize=8, va="center", ha="right", transform=ax.transAxes)
            continue
        for t in p["targets"]:
            url = f"http://{prom}/api/v1/query_range?" + urllib.parse.urlencode(
                {"query": substitute(t["expr"], __rate_interval="10s"),
                 "start": f"{t0:.3f}", "end": f"{t1:.3f}", "step": "1"})
            for r in json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]:
                xs = [float(x) - t0 for x, _ in r["values"]]
                ys = [float(y) for _, y in r["values"]]
                if unit == "s":
                    ys = [y * 1000 for y in ys]
                ax.plot(xs, ys, linewidth=1.2, label=legend(t.get("legendFormat", ""), r["metric"]))
        ax.axvspan(t_out0 - t0, t_out1 - t0, color="#f2495c", alpha=0.12)
        ax.set_xlim(0, t1 - t0)
        ax.set_xlabel("seconds into the run", color="#9fa7b3", fontsize=7)
        ax.set_ylabel({"s": "ms", "suffix: /s": "per second"}.get(unit, ""), color="#9fa7b3", fontsize=7)
        ax.grid(color="#2c3235", linewidth=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da", ncol=2)
    fig.text(0.005, 0.012,
             f"Not a Grafana screenshot: the queries of grafana/dashboards/pipeline-overview.json (\"{dash['title']}\"), "
             "evaluated by the Prometheus of a scripts/check-ops run and drawn with matplotlib (stat panels: last value).\n"
             f"Real services on one machine (debug builds): 20 vehicles reporting every 500 ms with 2% faults, then a "
             f"{t_out1 - t_out0:.0f} s Kafka outage (shaded: stopped, down, starting again); the processor fills batches "
             "for 2 s; rates over 10 s windows.",
             color="#9fa7b3", fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110, facecolor=fig.get_facecolor())
    print(f"wrote {args.out}")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="render", description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--out", required=True)
    return render(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
