//! The operator's view: latency histograms that count what happened (deliveries, handshakes, API requests, cluster
//! hops), /metrics accepted by Prometheus's own parser (`promtool check metrics`), the live stats stream under a
//! bounded load, the status routes behind the API key, and the deploy assets (alert rules accepted by
//! `promtool check rules`; a Grafana dashboard model whose every query names a metric /metrics has).

mod common;

use common::redis_server::RedisServer;
use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HISTOGRAMS: [&str; 5] = [
    "wsgate_delivery_latency_seconds",
    "wsgate_handshake_duration_seconds",
    "wsgate_api_request_duration_seconds",
    "wsgate_cluster_hop_latency_seconds",
    "wsgate_replay_duration_seconds",
];

fn node(redis: &RedisServer) -> Server {
    let set = format!("cluster.redis={}", redis.url());
    Server::start(&["--threads", "2", "--set", &set])
}

/// Runs promtool (Debian's `prometheus` package; scripts/test.sh installs it) with `args`, `stdin` as input.
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool (apt-get install prometheus): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Names of the series in a Prometheus text exposition.
fn series_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// A histogram's buckets (le, cumulative count), `_count` and `_sum`; checks the shape Prometheus relies on.
fn histogram(text: &str, name: &str) -> (Vec<(f64, u64)>, u64, f64) {
    let mut buckets = Vec::new();
    let (mut count, mut sum) = (None, None);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            let le = rest.split('"').next().unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            buckets.push((le, value.parse::<u64>().unwrap()));
        } else if line.starts_with(&format!("{name}_count ")) {
            count = Some(value.parse::<u64>().unwrap());
        } else if line.starts_with(&format!("{name}_sum ")) {
            sum = Some(value.parse::<f64>().unwrap());
        }
    }
    let count = count.unwrap_or_else(|| panic!("no {name}_count"));
    assert!(buckets.len() > 10, "{name}: buckets {buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{name}: bounds must rise and counts never fall: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{name}");
    (
        buckets,
        count,
        sum.unwrap_or_else(|| panic!("no {name}_sum")),
    )
}

fn latency(stats: &Value, key: &str) -> Value {
    let l = stats["latency"][key].clone();
    assert!(l.is_object(), "no latency.{key} in {stats}");
    l
}

#[test]
fn histograms_count_deliveries_handshakes_requests_and_cluster_hops_and_metrics_parse() {
    let redis = RedisServer::start();
    let a = node(&redis);
    let b = node(&redis);
    let mut subscribers: Vec<_> = (0..20)
        .map(|_| ws_connect(a.ws, "/ws?channels=op"))
        .collect();
    let mut api_a = Http::connect(a.api);
    let mut api_b = Http::connect(b.api);
    for i in 0..10 {
        publish(&mut api_a, "op", &i.to_string());
    }
    // Node b's publishes reach a's subscribers over the Redis bus: cluster hops on a.
    for i in 10..15 {
        publish(&mut api_b, "op", &i.to_string());
    }
    for (n, ws) in subscribers.iter_mut().enumerate() {
        for i in 0..15 {
            let m = tws_next_json(ws, Duration::from_secs(10), &format!("subscriber {n}"));
            assert_eq!(m["data"], i, "subscriber {n}: {m}");
        }
    }
    // Reactors hand their samples over once a second.
    let deliveries = a.wait_stat("/latency/delivery/count", 300, Duration::from_secs(5));
    assert_eq!(
        deliveries, 300,
        "20 subscribers x 15 messages, one sample each"
    );
    let handshakes = a.wait_stat("/latency/handshake/count", 20, Duration::from_secs(5));
    assert_eq!(handshakes, 20);
    let stats = a.stats();
    for key in ["delivery", "handshake", "api_request", "cluster_hop"] {
        let l = latency(&stats, key);
        let q: Vec<u64> = ["p50", "p90", "p99", "p999", "max"]
            .iter()
            .map(|k| l[k].as_u64().unwrap())
            .collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "{key}: {l}");
        assert!(q[0] > 0, "{key}: samples but a zero median: {l}");
    }
    assert!(latency(&stats, "cluster_hop")["count"].as_u64().unwrap() >= 5);
    assert!(latency(&stats, "api_request")["count"].as_u64().unwrap() >= 10);

    let text = http_get(a.api, "/metrics").text();
    let (ok, out) = promtool(&["check", "metrics"], &text);
    assert!(
        ok,
        "promtool check metrics:\n{out}\n--- /metrics ---\n{text}"
    );
    for name in HISTOGRAMS {
        histogram(&text, name);
    }
    let (buckets, count, sum) = histogram(&text, "wsgate_delivery_latency_seconds");
    assert_eq!(count, 300);
    assert!(sum > 0.0 && sum < 300.0 * 10.0, "sum {sum}");
    assert!(
        buckets.iter().any(|&(le, c)| le < 10.0 && c > 0),
        "{buckets:?}"
    );
    assert_eq!(histogram(&text, "wsgate_handshake_duration_seconds").1, 20);

    // The busiest channels: asked once, listed by the reactors at their next tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    let top = loop {
        let r = http_get(a.api, "/api/channels/top");
        assert_eq!(r.status, 200, "{r}");
        let list = r.json()["channels"].clone();
        if list.as_array().is_some_and(|l| !l.is_empty()) || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        top,
        serde_json::json!([{"channel":"op","subscribers":20,"deliveries_total":300}]),
        "summed over both reactors"
    );
}

#[test]
fn stats_stream_follows_a_bounded_load_behind_the_api_key() {
    let server = Server::start(&["--threads", "2", "--set", "api.api_key=s3cret"]);
    let auth = [("Authorization", "apikey s3cret")];
    let mut api = Http::connect(server.api);
    let _subscribers: Vec<_> = (0..30)
        .map(|_| ws_connect(server.ws, "/ws?channels=load"))
        .collect();
    let post = [
        ("Authorization", "apikey s3cret"),
        ("Content-Type", "application/json"),
    ];
    let mut poller = Http::connect(server.api);
    let mut seq = 0;
    let mut points: Vec<Vec<u64>> = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut poll = |points: &mut Vec<Vec<u64>>| {
        let r = poller.request("GET", &format!("/api/stats/stream?since={seq}"), &auth, b"");
        assert_eq!(r.status, 200, "{r}");
        let v = r.json();
        columns = serde_json::from_value(v["columns"].clone()).unwrap();
        for p in v["points"].as_array().unwrap() {
            let p: Vec<u64> = serde_json::from_value(p.clone()).unwrap();
            assert!(p[0] > seq, "point {} repeated after since={seq}", p[0]);
            assert_eq!(p.len(), columns.len());
            seq = p[0];
            points.push(p);
        }
    };
    // 3 s of publishes (about 150 a second to 30 subscribers), then 2.5 s of quiet.
    let started = Instant::now();
    let mut last_poll = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let body = format!("{{\"channel\":\"load\",\"data\":{n}}}");
        let r = api.request("POST", "/api/publish", &post, body.as_bytes());
        assert_eq!(r.status, 200, "{r}");
        n += 1;
        std::thread::sleep(Duration::from_millis(6));
        if last_poll.elapsed() > Duration::from_millis(700) {
            poll(&mut points);
            last_poll = Instant::now();
        }
    }
    std::thread::sleep(Duration::from_millis(2500));
    poll(&mut points);

    let col = |name: &str| columns.iter().position(|c| c == name).unwrap();
    assert!(points.len() >= 4, "a point a second: {points:?}");
    assert!(points
        .windows(2)
        .all(|w| w[1][col("t_ms")] > w[0][col("t_ms")]));
    let busy: Vec<&Vec<u64>> = points
        .iter()
        .filter(|p| p[col("deliveries_per_s")] > 0)
        .collect();
    assert!(
        busy.len() >= 2,
        "load visible in at least two points: {points:?}"
    );
    assert!(busy.iter().all(|p| p[col("delivery_p99_us")] > 0
        && p[col("delivery_p50_us")] <= p[col("delivery_p99_us")]
        && p[col("delivery_p99_us")] <= p[col("delivery_max_us")]));
    // Deliveries per second within reach of what was sent (30 subscribers x publishes per second).
    let peak = busy
        .iter()
        .map(|p| p[col("deliveries_per_s")])
        .max()
        .unwrap();
    let sent_per_s = 30 * n / 3;
    assert!(
        peak <= sent_per_s * 2 && peak >= sent_per_s / 4,
        "peak {peak}/s vs about {sent_per_s}/s sent"
    );
    let last = points.last().unwrap();
    assert_eq!(
        last[col("deliveries_per_s")],
        0,
        "quiet at the end: {last:?}"
    );
    assert_eq!(last[col("connections")], 30);
    assert!(points.iter().any(|p| p[col("publishes_per_s")] > 0));

    // The same numbers as /api/stats.
    let r = api.request("GET", "/api/stats", &auth, b"");
    assert_eq!(r.json()["totals"]["connections"], 30);
}

#[test]
fn status_routes_want_the_key_as_apikey_or_basic_password() {
    let server = Server::start(&["--set", "api.api_key=s3cret"]);
    let mut api = Http::connect(server.api);
    for path in ["/status", "/api/stats/stream"] {
        let r = api.get(path);
        assert_eq!(r.status, 401, "{path}: {r}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"wsgate\", charset=\"UTF-8\""),
            "{path}: a browser must be asked for the key"
        );
        // base64("ops:wrong") and base64("ops:s3cret")
        let r = api.request("GET", path, &[("Authorization", "Basic b3BzOndyb25n")], b"");
        assert_eq!(r.status, 401, "{path}: {r}");
        let r = api.request(
            "GET",
            path,
            &[("Authorization", "Basic b3BzOnMzY3JldA==")],
            b"",
        );
        assert_eq!(r.status, 200, "{path}: {r}");
        let r = api.request("GET", path, &[("Authorization", "Basic !!notbase64")], b"");
        assert_eq!(r.status, 401, "{path}: {r}");
        let r = api.request("POST", path, &[("Authorization", "apikey s3cret")], b"");
        assert_eq!(r.status, 405, "{path}: {r}");
    }
    let key = [("Authorization", "apikey s3cret")];
    let page = api.request("GET", "/status", &key, b"");
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(
        html.contains("/api/stats/stream") && html.contains("<canvas") || html.contains("canvas")
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    for bad in ["since=x", "since=-1", "from=3"] {
        let r = api.request("GET", &format!("/api/stats/stream?{bad}"), &key, b"");
        assert_eq!(r.status, 400, "{bad}: {r}");
    }
}

/// Metric names (`wsgate_...`) in a query expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("wsgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn alert_rules_and_grafana_dashboard_are_valid_and_name_existing_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("deploy/prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok, "promtool check rules:\n{out}");

    // A cluster node exposes every series the assets may name.
    let redis = RedisServer::start();
    let a = node(&redis);
    let metrics = series_names(&http_get(a.api, "/metrics").text());

    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let runbooks = std::fs::read_to_string(root.join("deploy/README.md")).unwrap();
    let mut alerts = 0;
    for line in rules_text.lines().map(str::trim) {
        if let Some(expr) = line.strip_prefix("expr:") {
            for name in metric_names(expr) {
                assert!(
                    metrics.contains(&name),
                    "alerts.yml names {name}, not in /metrics"
                );
            }
        }
        if let Some(alert) = line.strip_prefix("- alert:") {
            alerts += 1;
            let alert = alert.trim();
            assert!(
                runbooks.contains(&format!("### {alert}")),
                "deploy/README.md has no runbook heading ### {alert}"
            );
        }
    }
    assert!(alerts >= 6, "{alerts} alerts");

    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/wsgate.json")).unwrap(),
    )
    .expect("wsgate.json is JSON");
    assert!(
        dash["title"].is_string() && dash["uid"].is_string(),
        "title and uid"
    );
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 30);
    assert!(dash["time"]["from"].is_string() && dash["templating"]["list"].is_array());
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = HashSet::new();
    let mut queries = 0;
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {p}"
        );
        let kind = p["type"].as_str().expect("panel type");
        assert!(["row", "timeseries", "stat"].contains(&kind), "{kind}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0 && g["y"].is_u64(),
            "{g}"
        );
        if kind == "row" {
            continue;
        }
        assert!(p["title"].is_string());
        for t in p["targets"].as_array().expect("targets") {
            assert!(t["refId"].is_string());
            let expr = t["expr"].as_str().expect("expr");
            let uid = t["datasource"]["uid"].as_str().unwrap();
            assert!(vars.contains(&uid.trim_start_matches("${").trim_end_matches('}')));
            for name in metric_names(expr) {
                assert!(
                    metrics.contains(&name),
                    "dashboard names {name}, not in /metrics"
                );
                queries += 1;
            }
        }
    }
    assert!(queries >= 20, "{queries} metric references");
}
