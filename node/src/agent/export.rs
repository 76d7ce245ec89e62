//! Export on a node: the probes' spans, batched, into one durable delivery per destination.
//! Destinations come from the replicated config (every node exports to them) and from the
//! standard `OTEL_EXPORTER_OTLP_*` variables (this node only).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use apiary_config::{ClusterConfig, Destination, Protocol, WhenFull};
use apiary_consensus::Consensus;
use apiary_pipeline::sources::{Ingest, NotTaken};
use apiary_pipeline::{
    otlp, store_everywhere, AnySink, Delivery, DeliveryStats, FullPolicy, JsonLines, OtlpGrpc,
    OtlpHttp, RedMetrics, ResourceInfo, SendLimits, ServerSpanIndex, Signal,
};
use apiary_probes::Observer;
use apiary_span::Span;
use apiary_storage::Store;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

/// Node-local destinations' names; `@` cannot appear in replicated destination names.
const ENV_DESTINATION: &str = "@env";
const FILE_DESTINATION: &str = "@file";
/// A JSON-lines file is rotated to `.1` past this size.
const FILE_MAX_BYTES: u64 = 64 << 20;
const BATCH_SPANS: usize = 512;
const BATCH_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub buffer_bytes: u64,
    pub full_policy: FullPolicy,
    /// Free bytes every buffer leaves on the data dir's filesystem.
    pub disk_reserve_bytes: u64,
    /// Requests in flight per destination, and how large a merged request grows.
    pub send_limits: SendLimits,
    /// How often the RED metrics go to the destinations.
    pub metrics_interval: Duration,
    /// Also write everything as OTLP/JSON lines here (`-`: standard output).
    pub json_file: Option<std::path::PathBuf>,
}

struct Active {
    destination: Destination,
    delivery: Option<Arc<Delivery<AnySink>>>,
    worker: Option<tokio::task::JoinHandle<()>>,
    problem: Option<String>,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(worker) = &self.worker {
            worker.abort();
        }
    }
}

/// One row of `GET /v1/export`.
#[derive(Debug, Serialize)]
pub struct DestinationStatus {
    pub name: String,
    pub origin: &'static str,
    pub endpoint: String,
    /// `http/protobuf`, `grpc` or `json-lines` (the local file sink).
    pub protocol: String,
    pub state: &'static str,
    pub reason: Option<String>,
    /// What the buffer does when full: `refuse` (apps retry), `block` or `drop` (opt-in).
    pub full_policy: FullPolicy,
    /// The cap on the buffer's files on disk.
    pub max_bytes: u64,
    /// Items taken into the buffer (acknowledged to apps, or the probes' own).
    pub accepted_items: u64,
    pub queued_batches: u64,
    pub queued_items: u64,
    /// The buffer's segment files on disk, measured.
    pub queued_bytes: u64,
    pub delivered_items: u64,
    /// Items the destination would not keep (partial success, or refused for good).
    pub refused_items: u64,
    /// Items not taken because the buffer was full (apps told to retry, probe spans shed).
    pub pushed_back_items: u64,
    /// Items taken and then dropped for room: only for a destination whose `when_full` is `drop`.
    pub dropped_items: u64,
    pub failed_attempts: u64,
    pub in_flight: u64,
    /// Seconds the backlog takes to deliver at the recent rate; null while nothing drains.
    pub drain_seconds: Option<f64>,
    /// Free bytes on the buffer's filesystem, and what it keeps free (`--export-disk-reserve-bytes`):
    /// below that the destination pushes back as when full. Null without a buffer.
    pub disk_available_bytes: Option<u64>,
    pub disk_reserve_bytes: u64,
    /// The free space is at (or within 1 MiB of) the reserve: new data is pushed back.
    pub disk_low: bool,
}

pub struct Export {
    store: Store,
    resource: ResourceInfo,
    options: ExportOptions,
    env_destination: Option<Destination>,
    active: Mutex<HashMap<String, Active>>,
    /// Spans the batcher missed because it fell behind the probes.
    pub source_dropped: AtomicU64,
    /// Probe spans (and RED points) not stored in some destination's buffer because it was
    /// full: the probes cannot be told to retry, so they are shed, counted here once per batch
    /// (and per destination in its `pushed_back_items`); the cooperative tuner samples down.
    pub probe_items_shed: Arc<AtomicU64>,
    /// Items apps sent while no destination was configured.
    pub received_without_destination: AtomicU64,
    /// Requests per service, route and status, counted before sampling.
    pub red: Arc<RedMetrics>,
    /// Probe server spans by (trace, caller span), to re-parent apps' own spans under them.
    pub server_spans: Arc<ServerSpanIndex>,
    /// Set once the node's probes are loaded ([`Export::follow_probes`]).
    probes: std::sync::OnceLock<FollowedProbes>,
}

struct FollowedProbes {
    /// The OTLP receivers sync with it (`Ingest::sync_with_probes`).
    observer: Arc<Observer>,
    /// Asks the span batcher to enqueue what it holds at once; it answers when it has.
    flush_requests: tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>,
}

impl Export {
    /// Starts delivering to every destination, what the buffers already hold first. The
    /// probes come later ([`Export::follow_probes`]): loading them can take many seconds on a
    /// busy host, and a restarted node's backlog should not wait for that.
    pub fn start(
        store: Store,
        consensus: &Arc<Consensus>,
        resource: ResourceInfo,
        options: ExportOptions,
    ) -> Result<Arc<Self>> {
        let export = Arc::new(Export {
            store,
            resource,
            options,
            env_destination: env_destination()?,
            active: Mutex::new(HashMap::new()),
            source_dropped: AtomicU64::new(0),
            probe_items_shed: Arc::default(),
            received_without_destination: AtomicU64::new(0),
            red: Arc::new(RedMetrics::new()),
            server_spans: Arc::default(),
            probes: std::sync::OnceLock::new(),
        });
        let state = consensus.config_state().clone();
        let mut versions = state.subscribe();
        export.reconcile(state.history().current());
        let weak = Arc::downgrade(&export);
        tokio::spawn(async move {
            while versions.changed().await.is_ok() {
                let Some(export) = weak.upgrade() else { return };
                let config = state.history().current().clone();
                export.reconcile(&config);
            }
        });
        Ok(export)
    }

    /// Takes the probes' spans and RED counts into the export, once they are loaded.
    pub fn follow_probes(self: &Arc<Self>, observer: Arc<Observer>) {
        let (flush_requests, flushes) = tokio::sync::mpsc::unbounded_channel();
        let followed = FollowedProbes {
            observer: observer.clone(),
            flush_requests,
        };
        if self.probes.set(followed).is_err() {
            tracing::error!("the export already follows the probes");
            return;
        }
        let red = self.red.clone();
        observer.set_request_tap(Box::new(move |span| red.record(span)));
        // Requests sampling dropped that the kernel counted without sending them.
        let red = self.red.clone();
        observer.set_counted_tap(Box::new(move |span, counted| {
            if let Err(e) =
                red.record_counted(span, counted.count, counted.sum_ns, &counted.buckets)
            {
                tracing::error!("kernel RED counts not added: {e}");
            }
        }));
        // Indexed as published, so that after `Observer::sync` an app span finds the probe
        // span of its request.
        let index = self.server_spans.clone();
        observer.set_export_tap(Box::new(move |span| index.remember(span)));
        tokio::spawn(batch_spans(Arc::downgrade(self), observer, flushes));
        tokio::spawn(export_red_metrics(Arc::downgrade(self)));
    }

    /// At shutdown: the probes' records still in the ring and the spans the batcher holds go
    /// into the destinations' disk buffers, to be delivered after a restart rather than lost.
    pub async fn finish(&self) {
        const WAIT: Duration = Duration::from_secs(2);
        let Some(probes) = self.probes.get() else {
            return;
        };
        probes.observer.sync(WAIT).await;
        let (done, enqueued) = tokio::sync::oneshot::channel();
        if probes.flush_requests.send(done).is_ok() {
            let _ = tokio::time::timeout(WAIT, enqueued).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts deliveries for new or changed destinations and stops removed ones (their queue
    /// goes with them).
    fn reconcile(&self, config: &ClusterConfig) {
        let mut wanted: HashMap<String, Destination> =
            config.destinations.clone().into_iter().collect();
        if let Some(local) = &self.env_destination {
            wanted.insert(ENV_DESTINATION.to_string(), local.clone());
        }
        if let Some(path) = &self.options.json_file {
            wanted.insert(
                FILE_DESTINATION.to_string(),
                Destination {
                    endpoint: path.display().to_string(),
                    ..Destination::default()
                },
            );
        }
        let mut active = self.lock();
        let removed: Vec<String> = active
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            active.remove(&name);
            if let Err(e) = self.store.drop_segment_queue(&name) {
                tracing::warn!(destination = %name, "cannot delete its export queue: {e}");
            }
            tracing::info!(destination = %name, "export stopped (destination removed)");
        }
        for (name, destination) in wanted {
            if active
                .get(&name)
                .is_some_and(|a| a.destination == destination)
            {
                continue;
            }
            let started = self.start_delivery(&name, &destination);
            active.insert(name, started);
        }
    }

    /// The destination's own `when_full`, or the node's `--export-buffer-full`.
    fn full_policy(&self, destination: &Destination) -> FullPolicy {
        match destination.when_full {
            WhenFull::Default => self.options.full_policy,
            WhenFull::Refuse => FullPolicy::Refuse,
            WhenFull::Block => FullPolicy::Block,
            WhenFull::Drop => FullPolicy::Drop,
        }
    }

    fn start_delivery(&self, name: &str, destination: &Destination) -> Active {
        let mut active = Active {
            destination: destination.clone(),
            delivery: None,
            worker: None,
            problem: None,
        };
        let headers: Vec<(String, String)> = destination
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sink = if name == FILE_DESTINATION {
            Ok(AnySink::JsonLines(JsonLines::new(
                std::path::Path::new(&destination.endpoint),
                FILE_MAX_BYTES,
            )))
        } else {
            match destination.protocol {
                Protocol::HttpProtobuf => {
                    OtlpHttp::new(&destination.endpoint, headers).map(AnySink::Http)
                }
                Protocol::Grpc => OtlpGrpc::new(&destination.endpoint, headers).map(AnySink::Grpc),
            }
        };
        let delivery = sink.and_then(|sink| {
            let queue = self
                .store
                .segment_queue(name, self.options.buffer_bytes)
                .map_err(|e| e.to_string())?;
            match self.store.move_sled_queue(name, &queue) {
                Ok(0) => {}
                Ok(n) => tracing::info!(destination = %name, batches = n, "export buffer moved from sled to segment files"),
                Err(e) => tracing::warn!(destination = %name, "cannot move the old export buffer: {e}"),
            }
            Delivery::with_limits(
                name,
                queue,
                sink,
                self.options.buffer_bytes,
                self.full_policy(destination),
                self.options.send_limits,
            )
        });
        match delivery {
            Ok(delivery) => {
                delivery.set_disk_reserve(self.options.disk_reserve_bytes);
                tracing::info!(destination = %name, endpoint = %apiary_config::redact_endpoint(&destination.endpoint), "export started");
                active.worker = Some(tokio::spawn(delivery.clone().run()));
                active.delivery = Some(delivery);
            }
            Err(e) => {
                tracing::warn!(destination = %name, "cannot export: {e}");
                active.problem = Some(e);
            }
        }
        active
    }

    /// Queues an OTLP request from an app for every destination, or for none: refused with
    /// backpressure when a buffer is full (the app retries). Without destinations it is
    /// counted and dropped.
    pub async fn accept(&self, signal: Signal, items: u32, payload: &[u8]) -> Result<(), NotTaken> {
        let deliveries = self.deliveries();
        if deliveries.is_empty() {
            self.received_without_destination
                .fetch_add(items as u64, Ordering::Relaxed);
            return Ok(());
        }
        store_everywhere(&deliveries, signal, items, payload).await
    }

    fn deliveries(&self) -> Vec<Arc<Delivery<AnySink>>> {
        self.lock()
            .values()
            .filter_map(|a| a.delivery.clone())
            .collect()
    }

    /// Queues one batch of the node's own (probe spans, RED metrics) for each of
    /// `deliveries`. Nobody can be told to retry it, so a full buffer sheds it there (counted,
    /// and logged at most every few seconds) and the others still get it.
    async fn enqueue(
        &self,
        deliveries: &[Arc<Delivery<AnySink>>],
        signal: Signal,
        items: u32,
        payload: &[u8],
    ) {
        let mut shed = None;
        for delivery in deliveries {
            match delivery.enqueue(signal, items, payload).await {
                Ok(()) => {}
                Err(e) if e.is_full() => shed = Some((delivery.name.clone(), e)),
                Err(e) => {
                    tracing::error!(destination = %delivery.name, "cannot queue a batch: {e}")
                }
            }
        }
        if let Some((destination, e)) = shed {
            let before = self
                .probe_items_shed
                .fetch_add(items as u64, Ordering::Relaxed);
            // The first shed batch, then one line per ~100 k items.
            if before == 0 || before / 100_000 != (before + items as u64) / 100_000 {
                tracing::warn!(%destination, shed_total = before + items as u64,
                    "probe spans shed (the probes cannot retry): {e}");
            }
        }
    }

    /// Queues one request of the node's own making (a prediction's log record) for every
    /// destination, shed where a buffer is full like the probes' spans. Without destinations
    /// nothing is queued.
    pub async fn enqueue_own(&self, signal: Signal, items: u32, payload: &[u8]) {
        let deliveries = self.deliveries();
        if !deliveries.is_empty() {
            self.enqueue(&deliveries, signal, items, payload).await;
        }
    }

    /// What the node's own exported data names as its resource.
    pub fn resource(&self) -> &ResourceInfo {
        &self.resource
    }

    async fn enqueue_spans(&self, spans: &[Arc<Span>]) {
        let deliveries = self.deliveries();
        if deliveries.is_empty() {
            return;
        }
        let payload = otlp::encode(spans, &self.resource);
        self.enqueue(&deliveries, Signal::Traces, spans.len() as u32, &payload)
            .await;
    }

    pub fn status(&self) -> Vec<DestinationStatus> {
        let mut rows: Vec<DestinationStatus> = self
            .lock()
            .iter()
            .map(|(name, active)| {
                let disk_room = active.delivery.as_ref().and_then(|d| d.disk_room());
                let stat = |f: fn(&DeliveryStats) -> &AtomicU64| {
                    active
                        .delivery
                        .as_ref()
                        .map(|d| f(&d.stats).load(Ordering::Relaxed))
                        .unwrap_or(0)
                };
                let last_error = active.delivery.as_ref().and_then(|d| d.stats.last_error());
                DestinationStatus {
                    name: name.clone(),
                    origin: match name.as_str() {
                        ENV_DESTINATION => "env",
                        FILE_DESTINATION => "local",
                        _ => "replicated",
                    },
                    endpoint: apiary_config::redact_endpoint(&active.destination.endpoint),
                    protocol: if name == FILE_DESTINATION {
                        "json-lines".into()
                    } else {
                        active.destination.protocol.to_string()
                    },
                    state: if active.problem.is_some() {
                        "failed"
                    } else {
                        "running"
                    },
                    reason: active.problem.clone().or(last_error),
                    full_policy: self.full_policy(&active.destination),
                    max_bytes: self.options.buffer_bytes,
                    accepted_items: stat(|s| &s.accepted_items),
                    queued_batches: stat(|s| &s.queued_batches),
                    queued_items: stat(|s| &s.queued_items),
                    queued_bytes: stat(|s| &s.queued_bytes),
                    delivered_items: stat(|s| &s.delivered_items),
                    refused_items: stat(|s| &s.refused_items),
                    pushed_back_items: stat(|s| &s.pushed_back_items),
                    dropped_items: stat(|s| &s.dropped_items),
                    failed_attempts: stat(|s| &s.failed_attempts),
                    in_flight: stat(|s| &s.in_flight),
                    drain_seconds: active
                        .delivery
                        .as_ref()
                        .and_then(|d| d.stats.drain_seconds()),
                    disk_available_bytes: disk_room.map(|room| room.available),
                    disk_low: disk_room.is_some_and(|room| room.is_low()),
                    disk_reserve_bytes: self.options.disk_reserve_bytes,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }
}

/// Collects spans into batches of up to 512 or 200 ms, whichever comes first, or at once when
/// [`Export::finish`] asks.
async fn batch_spans(
    export: std::sync::Weak<Export>,
    observer: Arc<Observer>,
    mut flushes: tokio::sync::mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<()>>,
) {
    let mut spans = observer.subscribe();
    // Not kept: the channel closes (and this task ends) when the observer's owners drop it.
    drop(observer);
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    // Set by a batch's first span: no timer while nothing waits, so an idle node does not wake
    // to find an empty batch.
    let mut deadline = None;
    loop {
        let mut asked = None;
        tokio::select! {
            received = spans.recv() => match received {
                Ok(span) => {
                    batch.push(span);
                    deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(BATCH_WAIT)));
                    if batch.len() < BATCH_SPANS {
                        continue;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    fell_behind(&export, missed);
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
            Some(done) = flushes.recv() => {
                // Everything published so far, not only what a full batch would hold.
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                }
                asked = Some(done);
            }
            () = async { deadline.as_mut().expect("guarded by the branch condition").await },
                if deadline.is_some() => {}
        }
        deadline = None;
        let Some(export) = export.upgrade() else {
            return;
        };
        for chunk in batch.chunks(BATCH_SPANS) {
            export.enqueue_spans(chunk).await;
        }
        batch.clear();
        if let Some(done) = asked {
            let _ = done.send(());
        }
    }
}

fn fell_behind(export: &std::sync::Weak<Export>, missed: u64) {
    if let Some(export) = export.upgrade() {
        export.source_dropped.fetch_add(missed, Ordering::Relaxed);
    }
    tracing::warn!(missed, "export fell behind the probes; spans not exported");
}

/// Sends the cumulative RED histograms to every destination once per interval.
async fn export_red_metrics(export: std::sync::Weak<Export>) {
    let Some(interval) = export.upgrade().map(|e| e.options.metrics_interval) else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(export) = export.upgrade() else {
            return;
        };
        // Also when nothing is exported: /metrics and /v1/red read the same series.
        export
            .red
            .expire_quiet(apiary_pipeline::transforms::red::QUIET_SERIES_EXPIRY);
        let deliveries = export.deliveries();
        if deliveries.is_empty() {
            continue;
        }
        if let Some(request) = export.red.to_otlp(&export.resource) {
            let points = request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .map(|s| s.metrics.len() as u32)
                .sum();
            let payload = prost::Message::encode_to_vec(&request);
            export
                .enqueue(&deliveries, Signal::Metrics, points, &payload)
                .await;
        }
    }
}

/// The node-local destination from `OTEL_EXPORTER_OTLP_ENDPOINT`, `_PROTOCOL` and `_HEADERS`.
fn env_destination() -> Result<Option<Destination>> {
    let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") else {
        return Ok(None);
    };
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Err(_) | Ok("http/protobuf") => Protocol::HttpProtobuf,
        Ok("grpc") => Protocol::Grpc,
        Ok(other) => bail!("OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: use http/protobuf or grpc"),
    };
    let mut headers = std::collections::BTreeMap::new();
    if let Ok(text) = std::env::var("OTEL_EXPORTER_OTLP_HEADERS") {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("OTEL_EXPORTER_OTLP_HEADERS: {pair:?} is not key=value");
            };
            headers.insert(key.trim().to_string(), percent_decode(value.trim()));
        }
    }
    let destination = Destination {
        endpoint,
        protocol,
        headers,
        ..Destination::default()
    };
    // The same checks as a replicated destination.
    let mut probe = ClusterConfig::default();
    probe.destinations.insert("env".into(), destination.clone());
    probe
        .validate()
        .map_err(|e| anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    Ok(Some(destination))
}

/// OTEL_EXPORTER_OTLP_HEADERS values are URL-encoded (`Bearer%20abc`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The OTLP receivers (`apiary_pipeline::sources`) hand apps' requests to the export.
impl Ingest for Export {
    fn server_spans(&self) -> &ServerSpanIndex {
        &self.server_spans
    }

    async fn sync_with_probes(&self, timeout: Duration) -> bool {
        match self.probes.get() {
            Some(probes) => {
                probes.observer.sync(timeout).await;
                true
            }
            None => false,
        }
    }

    async fn accept(&self, signal: Signal, items: u32, payload: &[u8]) -> Result<(), NotTaken> {
        Export::accept(self, signal, items, payload).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding_of_header_values() {
        assert_eq!(super::percent_decode("Bearer%20abc"), "Bearer abc");
        assert_eq!(super::percent_decode("a%2"), "a%2");
        assert_eq!(super::percent_decode("%41%42"), "AB");
        assert_eq!(super::percent_decode("plain"), "plain");
    }
}
