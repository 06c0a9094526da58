//! Native microbenchmark of the per-request work of the filter: one hit encoded from a
//! realistic request (`HitTemplate::encode`), and the whole `Tracker` path (ignore rules +
//! encoding + queueing). `make bench` runs it; target: encoding ≤ 1 µs per hit.

#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use matomo_proxy_wasm::classify::Kind;
use matomo_proxy_wasm::config::Settings;
use matomo_proxy_wasm::request::RequestFacts;
use matomo_proxy_wasm::tracker::Tracker;

fn settings() -> Settings {
    let json = br#"{"matomo_url":"https://matomo.example.com/matomo.php","id_site":7,
        "ignored_routes":["/healthz"],"ignored_patterns":["^/static/"],
        "ignored_ua_patterns":["(?i)kube-probe"],
        "routes_details":{"/checkout":{"action_name":"Checkout","cvar":{"team":"shop"}}},
        "queue_size":1000000,"batch_size":1000}"#;
    match Settings::from_json(json) {
        Ok(s) => s,
        Err(e) => unreachable!("bench config: {e}"),
    }
}

fn facts() -> RequestFacts {
    RequestFacts {
        method: "GET".into(),
        scheme: "https".into(),
        authority: "shop.example.com".into(),
        path: "/api/v1/products/12345?color=blue&size=M&utm_source=newsletter".into(),
        user_agent: Some(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/126.0.0.0 Safari/537.36"
                .into(),
        ),
        accept_language: Some("en-US,en;q=0.9,de;q=0.8".into()),
        referer: Some("https://shop.example.com/api/v1/products?page=2".into()),
        status: 200,
        server_time_ms: Some(12),
        time_secs: 1_760_000_000,
        client_ip: None,
        // Fields added later keep their defaults (absent).
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let settings = settings();
    let hits = &settings.site(&facts().authority, "/").expect("a site").hits;
    let req = facts();
    let mut g = c.benchmark_group("hit");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    let mut rand = 0u32;
    g.bench_function("encode", |b| {
        b.iter(|| {
            rand = rand.wrapping_add(1);
            black_box(hits.encode(
                black_box(&req),
                Kind::Pageview,
                &hits.naming(req.path_only()),
                rand,
            ))
        })
    });
    let mut tracker = Tracker::new(self::settings(), 1);
    let mut queued = 0;
    g.bench_function("ignored_track_queue", |b| {
        b.iter(|| {
            let r = black_box(&req);
            if tracker
                .ignored(&r.method, &r.path, &r.authority, r.user_agent.as_deref())
                .is_none()
            {
                tracker.track(r, Duration::ZERO);
                queued += 1;
            }
            // Hand the hits on now and then, as a tick does, so the outbox stays bounded.
            if queued >= 1000 {
                queued = 0;
                black_box(tracker.outbox.take_message());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
