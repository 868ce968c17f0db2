//! Logging and optional OpenTelemetry export for the jobs.
//!
//! * Human-readable output on a terminal, JSON lines otherwise (a pod's log).
//! * Level from `RUST_LOG` (default `info`), or `-v`/`-q` mapped by the job.
//! * OTLP export of traces and metrics only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. A
//!   collector that is down never fails a job: export errors are logged by the SDK and dropped.
//! * [`Telemetry::shutdown`] flushes pending spans and metrics; jobs call it before exiting.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{metrics::SdkMeterProvider, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Options for [`init`].
#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// The service name reported to OTLP, e.g. `cairn-etcd-snapshot`.
    pub service: &'static str,
    /// Default filter when `RUST_LOG` is unset, e.g. `info` or `debug`.
    pub default_level: String,
    /// Force JSON lines even on a terminal (`--log-format json`).
    pub json: Option<bool>,
}

/// Holds the exporters alive; dropping it without [`Telemetry::shutdown`] loses buffered spans.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Flush and stop exporters. Never fails the job: a flush error is printed and ignored.
    pub fn shutdown(self) {
        if let Some(t) = self.tracer
            && let Err(e) = t.shutdown()
        {
            eprintln!("telemetry: trace flush failed (ignored): {e}");
        }
        if let Some(m) = self.meter
            && let Err(e) = m.shutdown()
        {
            eprintln!("telemetry: metrics flush failed (ignored): {e}");
        }
    }
}

/// Install the global subscriber. Call once, from a job's `main`, inside a Tokio runtime when
/// OTLP export may be on (the exporters spawn onto it).
pub fn init(opts: &TelemetryOptions) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(opts.default_level.clone()));
    let json = opts.json.unwrap_or_else(|| !std::io::stderr().is_terminal());
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(false).with_writer(std::io::stderr).boxed()
    };

    let mut telemetry = Telemetry::default();
    let otel_layer = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => match otlp_providers(opts.service) {
            Ok((tracer, meter)) => {
                opentelemetry::global::set_meter_provider(meter.clone());
                let layer = tracing_opentelemetry::layer().with_tracer(tracer.tracer(opts.service));
                telemetry.tracer = Some(tracer);
                telemetry.meter = Some(meter);
                Some(layer)
            }
            Err(e) => {
                eprintln!("telemetry: OTLP export disabled: {e}");
                None
            }
        },
        _ => None,
    };

    // A second init (tests calling run() twice) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt_layer).with(otel_layer).try_init();
    telemetry
}

fn otlp_providers(service: &'static str) -> anyhow::Result<(SdkTracerProvider, SdkMeterProvider)> {
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let span_exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
    let tracer = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_batch_exporter(span_exporter)
        .build();
    let metric_exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic().build()?;
    let meter = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_periodic_exporter(metric_exporter)
        .build();
    Ok((tracer, meter))
}

/// Output flags every job has: verbosity, log format, JSON summary.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format: auto (human on a terminal, JSON lines otherwise), human or json.
    #[arg(long, global = true, env = "CAIRN_LOG_FORMAT", default_value = "auto")]
    pub log_format: String,
    /// Print the result as JSON on stdout (for CI).
    #[arg(long, global = true, env = "CAIRN_JSON")]
    pub json: bool,
}

impl OutputArgs {
    pub fn telemetry(&self, service: &'static str) -> TelemetryOptions {
        TelemetryOptions {
            service,
            default_level: match self.verbose {
                0 => "info".into(),
                1 => "debug".into(),
                _ => "trace".into(),
            },
            json: match self.log_format.as_str() {
                "json" => Some(true),
                "human" => Some(false),
                _ => None,
            },
        }
    }
}
