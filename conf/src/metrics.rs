//! The `/metrics` page of both daemons, encoded by metrics-exporter-prometheus
//! in the Prometheus text format (0.0.4).
//!
//! The protocol cores keep their counters as plain integers and list them as
//! `(name, help, kind, value)` without a prefix (`map-server-core` and
//! `xtr-core`, `Counters::metrics()`); each core crate names its prefix once
//! (`METRICS_PREFIX`). The daemon owns one [`Metrics`] (a recorder of its
//! own, never the process-global one) that keeps its histograms; each scrape
//! is a [`MetricsPage`] that sets every listed value and labelled series,
//! then renders.
//!
//! Why not prometheus-client: it encodes only OpenMetrics, whose counter
//! families are named without `_total` while their samples carry it, and the
//! promtool of Debian 12 (2.42) reads the page as Prometheus text and fails
//! every counter ("no help text"). The exporter's text passes `promtool check
//! metrics`, which a test runs against both daemons.

use metrics::{Key, Label, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

/// Labelled series of one family, at most (a guard against a configuration
/// with very many peers making every scrape huge). The series left out are
/// counted in `<prefix>_series_dropped`.
pub const MAX_SERIES_PER_FAMILY: usize = 1024;

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The metrics of one daemon.
pub struct Metrics {
    prefix: &'static str,
    recorder: PrometheusRecorder,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Metrics {
    /// Metrics whose names all start with `prefix` and `_`, with the given
    /// histograms: `(name, help, bucket upper bounds)`.
    pub fn new(prefix: &'static str, histograms: &[(&str, &'static str, &[f64])]) -> Metrics {
        let mut builder = PrometheusBuilder::new();
        for (name, _, buckets) in histograms {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(format!("{prefix}_{name}")), buckets)
                .expect("histogram buckets are not empty");
        }
        let m = Metrics {
            prefix,
            recorder: builder.build_recorder(),
        };
        for (name, help, _) in histograms {
            m.recorder.describe_histogram(
                m.key(name).into_parts().0,
                None,
                SharedString::const_str(help),
            );
            // On the page from the start, with count 0 (readers take the
            // change of sum and count).
            let _ = m.recorder.register_histogram(&m.key(name), &METADATA);
        }
        m
    }

    fn key(&self, name: &str) -> Key {
        Key::from_name(format!("{}_{name}", self.prefix))
    }

    fn labelled(&self, name: &str, label: &'static str, value: String) -> Key {
        Key::from_parts(
            format!("{}_{name}", self.prefix),
            vec![Label::new(label, value)],
        )
    }

    /// Records one sample of a histogram given to [`Metrics::new`].
    pub fn observe(&self, name: &str, value: f64) {
        self.recorder
            .register_histogram(&self.key(name), &METADATA)
            .record(value);
    }

    /// A page to fill with this scrape's values.
    pub fn page(&self) -> MetricsPage<'_> {
        MetricsPage {
            metrics: self,
            dropped: 0,
        }
    }
}

/// One scrape's worth of values.
pub struct MetricsPage<'a> {
    metrics: &'a Metrics,
    dropped: u64,
}

impl MetricsPage<'_> {
    fn describe(&self, name: &str, kind: &str, help: &str) {
        let r = &self.metrics.recorder;
        let key = self.metrics.key(name).into_parts().0;
        let help = SharedString::from_owned(help.to_owned());
        let unit = None::<Unit>;
        match kind {
            "counter" => r.describe_counter(key, unit, help),
            _ => r.describe_gauge(key, unit, help),
        }
    }

    fn set(&self, key: &Key, kind: &str, value: f64) {
        let r = &self.metrics.recorder;
        match kind {
            "counter" => r.register_counter(key, &METADATA).absolute(value as u64),
            _ => {
                debug_assert_eq!(kind, "gauge", "metric {key} of unknown kind {kind}");
                r.register_gauge(key, &METADATA).set(value)
            }
        }
    }

    /// Sets plain metrics listed as `(name, help, kind, value)`, `kind`
    /// being `counter` (names end in `_total`) or `gauge`.
    pub fn add_list<'b>(
        &mut self,
        list: impl IntoIterator<Item = (&'b str, &'b str, &'b str, u64)>,
    ) -> &mut Self {
        for (name, help, kind, value) in list {
            self.describe(name, kind, help);
            self.set(&self.metrics.key(name), kind, value as f64);
        }
        self
    }

    /// Sets a gauge family with one series per `label` value.
    pub fn gauges_by(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (String, f64)>,
    ) -> &mut Self {
        self.labelled(name, help, "gauge", label, values)
    }

    /// Sets a counter family with one series per `label` value.
    pub fn counters_by(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (String, u64)>,
    ) -> &mut Self {
        self.labelled(
            name,
            help,
            "counter",
            label,
            values.into_iter().map(|(l, v)| (l, v as f64)),
        )
    }

    fn labelled(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        label: &'static str,
        values: impl IntoIterator<Item = (String, f64)>,
    ) -> &mut Self {
        self.describe(name, kind, help);
        for (i, (label_value, v)) in values.into_iter().enumerate() {
            if i >= MAX_SERIES_PER_FAMILY {
                self.dropped += 1;
                continue;
            }
            self.set(&self.metrics.labelled(name, label, label_value), kind, v);
        }
        self
    }

    /// The page in the Prometheus text format.
    pub fn render(mut self) -> String {
        let dropped = self.dropped;
        self.add_list([(
            "series_dropped",
            "labelled series left out of this page (more than MAX_SERIES_PER_FAMILY in a family)",
            "gauge",
            dropped,
        )]);
        self.metrics.recorder.handle().render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_labelled_series_and_histograms_are_rendered_with_the_prefix() {
        let m = Metrics::new("lispwg_test", &[("delay_seconds", "delay", &[0.001, 0.01])]);
        m.observe("delay_seconds", 0.005);
        let mut page = m.page();
        page.add_list([
            ("things_total", "things", "counter", 3),
            ("now", "now", "gauge", 5),
        ])
        .gauges_by("up", "up", "peer", [("a".into(), 1.0), ("b".into(), 0.0)])
        .counters_by("refusals_total", "refusals", "peer", [("a".into(), 2)]);
        let text = page.render();
        for want in [
            "# HELP lispwg_test_things_total things\n# TYPE lispwg_test_things_total counter\nlispwg_test_things_total 3\n",
            "# TYPE lispwg_test_now gauge\nlispwg_test_now 5\n",
            "lispwg_test_up{peer=\"a\"} 1\n",
            "lispwg_test_up{peer=\"b\"} 0\n",
            "lispwg_test_refusals_total{peer=\"a\"} 2\n",
            "# TYPE lispwg_test_delay_seconds histogram\n",
            "lispwg_test_delay_seconds_bucket{le=\"0.001\"} 0\n",
            "lispwg_test_delay_seconds_bucket{le=\"0.01\"} 1\n",
            "lispwg_test_delay_seconds_count 1\n",
            "lispwg_test_series_dropped 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // Counters are set, not added to, on each scrape.
        let mut again = m.page();
        again.add_list([("things_total", "things", "counter", 4)]);
        let text = again.render();
        assert!(text.contains("lispwg_test_things_total 4\n"), "{text}");
    }

    #[test]
    fn a_histogram_is_on_the_page_before_its_first_sample() {
        let m = Metrics::new("t", &[("d_seconds", "d", &[0.1])]);
        let text = m.page().render();
        assert!(text.contains("t_d_seconds_count 0\n"), "{text}");
        assert!(text.contains("t_d_seconds_sum 0\n"), "{text}");
    }

    #[test]
    fn labelled_series_are_capped() {
        let m = Metrics::new("t", &[]);
        let mut page = m.page();
        page.gauges_by(
            "g",
            "g",
            "peer",
            (0..MAX_SERIES_PER_FAMILY + 5).map(|i| (format!("p{i}"), 1.0)),
        );
        let text = page.render();
        assert_eq!(text.matches("t_g{").count(), MAX_SERIES_PER_FAMILY);
        assert!(text.contains("t_series_dropped 5\n"), "{text}");
    }
}
