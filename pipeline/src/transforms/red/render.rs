//! RED series out: cumulative OTLP histograms and Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use apiary_span::RedSchema;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
    ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{
    unix_nanos_now, RedKey, RedMetrics, RedSeries, DURATION_BOUNDS_SECONDS, OVERFLOW_ROUTE,
};
use crate::otlp::attributes::{int_attribute, string_attribute};
use crate::otlp::resource::ResourceInfo;
use crate::prometheus::escape_label_value;

/// Adds a metric to a service's list, into the one of the same name when there is one: the
/// databases share theirs (`db.client.operation.duration`, told apart by `db.system.name`),
/// and a metric name must appear once per scope.
fn merge_same_name(mut metrics: Vec<Metric>, metric: Metric) -> Vec<Metric> {
    let same = metrics.iter_mut().find(|m| m.name == metric.name);
    match (same, metric.data) {
        (
            Some(Metric {
                data: Some(metric::Data::Histogram(into)),
                ..
            }),
            Some(metric::Data::Histogram(from)),
        ) => into.data_points.extend(from.data_points),
        (_, data) => metrics.push(Metric { data, ..metric }),
    }
    metrics
}

impl RedMetrics {
    /// Cumulative OTLP histograms, one resource per service; `None` when nothing was counted.
    pub fn to_otlp(&self, resource: &ResourceInfo) -> Option<ExportMetricsServiceRequest> {
        let rows = self.snapshot();
        if rows.is_empty() {
            return None;
        }
        let now = unix_nanos_now();
        // Per service, per protocol: the server side's points and the client side's.
        type Points = [Vec<HistogramDataPoint>; 2];
        let mut by_service: BTreeMap<String, Vec<(&'static RedSchema, Points)>> = BTreeMap::new();
        for (key, series) in rows {
            let schema = key.protocol;
            let mut attributes = vec![
                string_attribute(schema.operation_attribute, &key.operation),
                string_attribute(schema.route_attribute, &key.route),
                int_attribute(schema.status_attribute, key.status as i64),
            ];
            if key.error {
                attributes.push(string_attribute("error.type", key.status.to_string()));
            }
            if let Some((name, value)) = schema.fixed_attribute {
                attributes.push(string_attribute(name, value));
            }
            let protocols = by_service.entry(key.service.clone()).or_default();
            let at = match protocols.iter().position(|(p, _)| std::ptr::eq(*p, schema)) {
                Some(at) => at,
                None => {
                    protocols.push((schema, [Vec::new(), Vec::new()]));
                    protocols.len() - 1
                }
            };
            protocols[at].1[usize::from(key.kind == "client")].push(HistogramDataPoint {
                attributes,
                // A series that expired and came back counts from its return, so it says so.
                start_time_unix_nano: series.started_unix_nanos.max(self.start_unix_nanos),
                time_unix_nano: now,
                count: series.count,
                sum: Some(series.sum_seconds),
                bucket_counts: series.buckets.to_vec(),
                explicit_bounds: DURATION_BOUNDS_SECONDS.to_vec(),
                ..Default::default()
            });
        }
        let resource_metrics = by_service
            .into_iter()
            .map(|(service, protocols)| {
                let metrics: Vec<Metric> = protocols
                    .into_iter()
                    .flat_map(|(schema, [server, client])| {
                        [
                            (schema.server_metric, server),
                            (schema.client_metric, client),
                        ]
                        .into_iter()
                        .map(move |(name, points)| (schema, name, points))
                    })
                    .filter(|(_, _, points)| !points.is_empty())
                    .map(|(schema, name, data_points)| Metric {
                        name: name.into(),
                        description: schema.metric_description.into(),
                        unit: "s".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        })),
                        ..Default::default()
                    })
                    .fold(Vec::new(), merge_same_name);
                ResourceMetrics {
                    resource: Some(Resource {
                        attributes: resource.attributes(&service, None),
                        ..Default::default()
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(InstrumentationScope {
                            name: "apiary".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect();
        Some(ExportMetricsServiceRequest { resource_metrics })
    }

    /// Prometheus text, per protocol (HTTP: `apiary_http_requests_total` and
    /// `apiary_http_request_duration_seconds`, a histogram), labelled by node, service, kind
    /// and the protocol's three labels (HTTP: method, route, status).
    pub fn render_prometheus(&self, node: &str, out: &mut String) {
        let rows = self.snapshot();
        for schema in apiary_span::RED_SCHEMAS {
            let rows: Vec<_> = rows
                .iter()
                .filter(|(key, _)| std::ptr::eq(key.protocol, *schema))
                .collect();
            render_protocol(schema, &rows, node, out);
        }
        let _ = writeln!(
            out,
            "# HELP apiary_http_series_overflow_total Requests counted under operation and route \
             {OVERFLOW_ROUTE} because the series limit was reached.\n# TYPE apiary_http_series_overflow_total counter"
        );
        let _ = writeln!(
            out,
            "apiary_http_series_overflow_total{{node=\"{}\"}} {}",
            escape_label_value(node),
            self.overflowed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP apiary_red_series_expired_total RED series dropped after 15 minutes without \
             a request.\n# TYPE apiary_red_series_expired_total counter\n\
             apiary_red_series_expired_total{{node=\"{}\"}} {}",
            escape_label_value(node),
            self.expired.load(Ordering::Relaxed)
        );
    }
}

fn render_protocol(
    schema: &RedSchema,
    rows: &[&(RedKey, RedSeries)],
    node: &str,
    out: &mut String,
) {
    let [operation, route, status] = schema.prometheus_labels;
    let labels = |key: &RedKey| {
        format!(
            "node=\"{}\",service=\"{}\",kind=\"{}\",{operation}=\"{}\",{route}=\"{}\",{status}=\"{}\"",
            escape_label_value(node),
            escape_label_value(&key.service),
            key.kind,
            escape_label_value(&key.operation),
            escape_label_value(&key.route),
            key.status
        )
    };
    let prefix = schema.prometheus_prefix;
    let name = schema.protocol.to_uppercase();
    let _ = writeln!(
        out,
        "# HELP {prefix}_requests_total {name} requests seen by the probes, counted before \
         sampling.\n# TYPE {prefix}_requests_total counter"
    );
    for (key, series) in rows {
        let _ = writeln!(
            out,
            "{prefix}_requests_total{{{}}} {}",
            labels(key),
            series.count
        );
    }
    let _ = writeln!(
        out,
        "# HELP {prefix}_request_duration_seconds Duration of {name} requests seen by the \
         probes, counted before sampling.\n# TYPE {prefix}_request_duration_seconds histogram"
    );
    for (key, series) in rows {
        let labels = labels(key);
        let mut cumulative = 0;
        for (i, count) in series.buckets.iter().enumerate() {
            cumulative += count;
            let le = DURATION_BOUNDS_SECONDS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                out,
                "{prefix}_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{prefix}_request_duration_seconds_sum{{{labels}}} {}",
            series.sum_seconds
        );
        let _ = writeln!(
            out,
            "{prefix}_request_duration_seconds_count{{{labels}}} {}",
            series.count
        );
    }
}
