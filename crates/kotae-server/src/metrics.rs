//! Prometheus metrics, one registry per server (no global state, so tests can run several).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub direction: String,
    pub category: String,
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily<RouteLabels>,
    pub time_to_first_token: Histogram,
    pub decode_tokens_per_s: Histogram,
    pub prompt_tokens_per_s: Histogram,
    pub answers: Family<KindLabels, Counter>,
    pub queue_depth: Gauge,
    pub guard_decisions: Family<GuardLabels, Counter>,
    pub guard_check_seconds: HistogramFamily<DirectionLabels>,
    pub guard_hold_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kotae");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by route and status", requests.clone());
        let latency: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register("http_request_duration_seconds", "Time to the response headers, by route", latency.clone());
        let time_to_first_token = latency_histogram();
        registry.register(
            "time_to_first_token_seconds",
            "From a chat request to its first generated token (retrieval, prompt, queue, prefill)",
            time_to_first_token.clone(),
        );
        let tps = || Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0]);
        let decode_tokens_per_s = tps();
        registry.register("decode_tokens_per_second", "Decoding speed per answer", decode_tokens_per_s.clone());
        let prompt_tokens_per_s = tps();
        registry.register(
            "prompt_tokens_per_second",
            "Prompt processing speed per answer",
            prompt_tokens_per_s.clone(),
        );
        let answers = Family::<KindLabels, Counter>::default();
        registry.register("answers", "Answers by kind (generated, direct, declined)", answers.clone());
        let queue_depth = Gauge::default();
        registry.register("generation_queue_depth", "Generation jobs waiting or running", queue_depth.clone());
        let guard_decisions = Family::<GuardLabels, Counter>::default();
        registry.register(
            "guard_decisions",
            "Guardrail findings by direction, category and action (warn, redact, block)",
            guard_decisions.clone(),
        );
        let guard_check_seconds: HistogramFamily<DirectionLabels> = Family::new_with_constructor(|| {
            Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05])
        });
        registry.register(
            "guard_check_seconds",
            "Time of one guard check (a question, or one answer sentence)",
            guard_check_seconds.clone(),
        );
        let guard_hold_seconds = latency_histogram();
        registry.register(
            "guard_hold_seconds",
            "How long the output gate held an answer's first text back (its first sentence being written and checked)",
            guard_hold_seconds.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            time_to_first_token,
            decode_tokens_per_s,
            prompt_tokens_per_s,
            answers,
            queue_depth,
            guard_decisions,
            guard_check_seconds,
            guard_hold_seconds,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
