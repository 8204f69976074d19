import unittest
from pathlib import Path

from ops import dashboards

ROOT = Path(__file__).resolve().parents[3]


class MetricNamesTest(unittest.TestCase):
    def test_functions_labels_ranges_and_keywords_are_not_metrics(self):
        expr = ('sum by (reason) (rate(fleetstream_receiver_positions_refused_total{reason!="x", job=~"a|b"}[5m])) '
                '/ ignoring(reason) group_left sum(rate(fleetstream_receiver_positions_received_total[5m] offset 1m)) > 0.05 '
                'and on(instance) up == 1 unless absent(fleetstream_processor_assigned_partitions)')
        self.assertEqual(dashboards.metric_names(expr), {
            "fleetstream_receiver_positions_refused_total", "fleetstream_receiver_positions_received_total", "up",
            "fleetstream_processor_assigned_partitions"})

    def test_numbers_durations_and_strings(self):
        expr = 'histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket[1m]))) * 1e3 + label_replace(y, "dst", "$1", "src", "(.*)")'
        self.assertEqual(dashboards.metric_names(expr), {"x_seconds_bucket", "y"})

    def test_recording_rule_names_with_colons(self):
        self.assertEqual(dashboards.metric_names("job:requests:rate5m > 1"), {"job:requests:rate5m"})


class SubstituteTest(unittest.TestCase):
    def test_grafana_variables(self):
        self.assertEqual(dashboards.substitute('rate(x{instance=~"$instance"}[$__rate_interval])'), 'rate(x{instance=~".*"}[20s])')
        self.assertEqual(dashboards.substitute("rate(x[${__rate_interval}])", __rate_interval="10s"), "rate(x[10s])")

    def test_unknown_variable(self):
        with self.assertRaisesRegex(ValueError, r"\$nope"):
            dashboards.substitute("x{a=\"$nope\"}")


class QueriesTest(unittest.TestCase):
    def test_nested_panels_and_variables(self):
        dash = {
            "templating": {"list": [{"type": "query", "name": "instance", "query": {"query": "label_values(up{job=\"r\"}, instance)"},
                                     "datasource": {"uid": "p"}}]},
            "panels": [{"type": "row", "title": "row", "panels": [
                {"title": "inner", "targets": [{"expr": "a_total"}], "datasource": {"uid": "p"}}]},
                {"title": "outer", "targets": [{"expr": "b", "datasource": {"uid": "q"}}]}],
        }
        self.assertEqual(list(dashboards.dashboard_queries(dash)), [
            ("variable $instance", 'up{job="r"}', {"uid": "p"}),
            ("inner", "a_total", {"uid": "p"}),
            ("outer", "b", {"uid": "q"})])

    def test_the_repository_dashboards_load(self):
        found = dict(dashboards.dashboards(ROOT))
        self.assertIn("pipeline-overview.json", found)
        for name, dash in found.items():
            for title, expr, _ in dashboards.dashboard_queries(dash):
                self.assertTrue(dashboards.metric_names(dashboards.substitute(expr)), f"{name} / {title}: {expr}")


if __name__ == "__main__":
    unittest.main()
