//! The metrics recorder: installs the Prometheus exporter, describes every family of
//! `keyward_core::metric::FAMILIES` (so each has its `# HELP`), registers at zero the
//! series alerts name, sets `keyward_build_info`, and collects the process metrics
//! (`process_*`) at each scrape. docs/OPERATIONS.md lists every family.

use std::sync::Arc;

use anyhow::Context as _;
use keyward_core::metric::{self, Kind};
use keyward_http::MetricsRender;
use keyward_workers::Meter;
use metrics::Label;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The commit this binary was built from (build.rs), or `unknown`.
const COMMIT: &str = env!("KEYWARD_BUILD_COMMIT");

/// Installs the recorder and everything above; the handle renders and runs upkeep.
pub(crate) fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ])
        .context("configuring metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    for family in metric::FAMILIES {
        describe(family);
    }
    metrics::gauge!(
        metric::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => COMMIT
    )
    .set(1.0);
    keyward_http::count_server_errors_from_zero();
    Ok(handle)
}

/// Describes `family` and registers its zero series.
fn describe(family: &metric::Family) {
    let name = family.name;
    let help = family.help;
    let labels = |set: &[(&'static str, &'static str)]| -> Vec<Label> {
        set.iter().map(|(k, v)| Label::new(*k, *v)).collect()
    };
    match family.kind {
        Kind::Counter => {
            metrics::describe_counter!(name, help);
            for set in family.at_zero {
                metrics::counter!(name, labels(set)).increment(0);
            }
        }
        Kind::Gauge => {
            metrics::describe_gauge!(name, help);
            for set in family.at_zero {
                metrics::gauge!(name, labels(set)).set(0.0);
            }
        }
        Kind::Histogram => metrics::describe_histogram!(name, help),
    }
}

/// What `/metrics` renders, wherever it is served: the process metrics and the
/// metering queue's depth are read at the scrape, then everything is rendered.
pub(crate) fn render(handle: PrometheusHandle, meter: Arc<Meter>) -> MetricsRender {
    let process = metrics_process::Collector::default();
    process.describe();
    Arc::new(move || {
        process.collect();
        meter.publish_depth();
        handle.render()
    })
}
