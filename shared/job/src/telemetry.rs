//! Logging and optional OpenTelemetry export for the jobs.
//!
//! * Human-readable output on a terminal, JSON lines otherwise (a pod's log).
//! * Level from `RUST_LOG` (default `info`), or `-v`/`-q` mapped by the job.
//! * OTLP export of traces and metrics only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
//!   signal's own `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`) is set, over gRPC or
//!   HTTP/protobuf as `OTEL_EXPORTER_OTLP_PROTOCOL` says (HTTP by default, as the
//!   specification has it). A collector that is down never fails a job: export errors are
//!   logged and dropped, each request is bounded by `OTEL_EXPORTER_OTLP_TIMEOUT` (5 s), and
//!   the flush at exit by [`FLUSH_BOUND`].
//! * [`Telemetry::shutdown`] flushes pending spans and metrics; jobs call it before exiting.

use std::io::IsTerminal;
use std::time::Duration;

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
    /// Flush and stop exporters. Never fails the job, and never holds it up longer than
    /// [`FLUSH_BOUND`]: the flush runs on its own thread, and a collector that does not
    /// answer in time is left behind (its data is lost, the job's exit is not).
    pub fn shutdown(self) {
        if self.tracer.is_none() && self.meter.is_none() {
            return;
        }
        let (done, finished) = std::sync::mpsc::channel();
        let flush = move || {
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
            let _ = done.send(());
        };
        // gRPC export runs on the runtime's workers, which stay free: only this thread
        // (the one `block_on` runs on) waits.
        let spawned = std::thread::Builder::new().name("otel-flush".into()).spawn(flush);
        if spawned.is_ok() && finished.recv_timeout(FLUSH_BOUND).is_err() {
            eprintln!(
                "telemetry: the collector did not take the last spans and metrics within {}s (dropped)",
                FLUSH_BOUND.as_secs()
            );
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
    let otel_layer = match otlp_providers(opts.service) {
        Ok((tracer, meter)) => {
            if let Some(m) = &meter {
                opentelemetry::global::set_meter_provider(m.clone());
            }
            telemetry.meter = meter;
            tracer.map(|t| {
                let layer = tracing_opentelemetry::layer().with_tracer(t.tracer(opts.service));
                telemetry.tracer = Some(t);
                layer
            })
        }
        Err(e) => {
            eprintln!("telemetry: OTLP export disabled: {e}");
            None
        }
    };

    // A second init (tests calling run() twice) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter).with(fmt_layer).with(otel_layer).try_init();
    telemetry
}

/// How long one export request may take (`OTEL_EXPORTER_OTLP_TIMEOUT` overrides, in ms).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the flush at exit may hold a job up, whatever the collector does.
pub const FLUSH_BOUND: Duration = Duration::from_secs(8);

/// The OTLP transport, from the standard variables: the signal's own
/// (`OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`) before the general one; `http/protobuf` when
/// neither is set, as the OpenTelemetry specification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(value: &str) -> anyhow::Result<Protocol> {
        match value.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "" => Ok(Protocol::HttpProtobuf),
            other => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other}: cairn speaks grpc or http/protobuf"
            ),
        }
    }

    fn for_signal(signal: &str) -> anyhow::Result<Protocol> {
        let own = std::env::var(format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")).ok();
        let general = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok();
        Protocol::parse(own.or(general).as_deref().unwrap_or(""))
    }
}

/// Whether a signal has somewhere to go: the general endpoint or its own.
fn configured(signal: &str) -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|e| !e.trim().is_empty()))
}

fn export_timeout() -> Duration {
    std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(EXPORT_TIMEOUT)
}

/// The resource every signal carries: the job as `service.name`, cairn's version, and the
/// cluster (`CAIRN_CLUSTER`) as `k8s.cluster.name`.
fn resource(service: &'static str) -> opentelemetry_sdk::Resource {
    let mut attrs =
        vec![opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if let Ok(c) = std::env::var("CAIRN_CLUSTER")
        && !c.is_empty()
    {
        attrs.push(opentelemetry::KeyValue::new("k8s.cluster.name", c));
    }
    opentelemetry_sdk::Resource::builder().with_service_name(service).with_attributes(attrs).build()
}

type Providers = (Option<SdkTracerProvider>, Option<SdkMeterProvider>);

fn otlp_providers(service: &'static str) -> anyhow::Result<Providers> {
    use opentelemetry_otlp::WithExportConfig;
    let resource = resource(service);
    let timeout = export_timeout();
    let tracer = if configured("TRACES") {
        let exporter = match Protocol::for_signal("TRACES")? {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(timeout)
                .build()?,
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_timeout(timeout)
                .build()?,
        };
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource.clone())
                .with_batch_exporter(exporter)
                .build(),
        )
    } else {
        None
    };
    let meter = if configured("METRICS") {
        let exporter = match Protocol::for_signal("METRICS")? {
            Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_timeout(timeout)
                .build()?,
            Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_timeout(timeout)
                .build()?,
        };
        Some(
            SdkMeterProvider::builder()
                .with_resource(resource)
                .with_periodic_exporter(exporter)
                .build(),
        )
    } else {
        None
    };
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
