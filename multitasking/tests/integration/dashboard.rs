//! The dashboard's server from the library, over plain HTTP: a traced pool
//! shows its workers, lanes and counts in `/api/state`; a token guards
//! every request; a non-loopback address without a token is refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use multitasking::dashboard::Dashboard;
use multitasking::trace::Tracer;
use multitasking::{Executor, ThreadPool};

use crate::conformance::{get, LIMIT};
use crate::tasks::sleep_ms;

/// GETs `path` with `header`; the status code and body.
fn http_get(addr: std::net::SocketAddr, path: &str, header: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}"))
}

/// Sends `POST path` with no body; the status code and the body.
fn http_post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        &format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"),
    )
}

/// Sends a request of `head` (its request line and headers) and reads the
/// whole response: the status code and the body.
fn http(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{head}Connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("a response");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

#[test]
fn a_traced_pool_shows_its_workers_and_tasks() {
    let tracer = Tracer::new();
    let pool = ThreadPool::builder()
        .max_workers(2)
        .thread_name_prefix("dash")
        .tracer(tracer.clone())
        .build()
        .unwrap();
    let served = Dashboard::new().tracer(&tracer).serve().unwrap();
    let futs: Vec<_> = (0..6).map(|_| pool.submit(sleep_ms, 20).unwrap()).collect();
    for f in &futs {
        get(f).unwrap();
    }
    let deadline = Instant::now() + LIMIT;
    let state = loop {
        let (code, body) = http_get(served.addr(), "/api/state", "");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON state");
        if v["done"] == 6 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the state never counted 6 tasks: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(state["source"], "local run");
    let workers = state["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{state}");
    assert!(workers
        .iter()
        .all(|w| w["name"].as_str().unwrap().starts_with("dash-")));
    let bars: usize = state["timeline"]["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["bars"].as_array().unwrap().len())
        .sum();
    assert_eq!(bars, 6);
    assert!(state["slowest"][0]["run_ms"].as_f64().unwrap() >= 20.0);
    let (code, page) = http_get(served.addr(), "/", "");
    assert_eq!(code, 200);
    assert!(page.contains("multitask dashboard"));
}

#[test]
fn a_token_guards_every_request() {
    let served = Dashboard::new().token("s3cret").serve().unwrap();
    for path in ["/", "/api/state", "/api/events"] {
        let (code, _) = http_get(served.addr(), path, "");
        assert_eq!(code, 401, "{path} without the token");
        let (code, _) = http_get(served.addr(), &format!("{path}?token=wrong"), "");
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    let (code, _) = http_get(served.addr(), "/api/state?token=s3cret", "");
    assert_eq!(code, 200);
    let (code, _) = http_get(
        served.addr(),
        "/api/state",
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!(code, 200);
    assert!(served.url().ends_with("/?token=s3cret"));
}

#[test]
fn a_public_address_needs_a_token() {
    let e = Dashboard::new()
        .listen("0.0.0.0:0".parse().unwrap())
        .serve()
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a token"), "{e}");
}

#[test]
fn discards_are_refused_unless_allowed() {
    let served = Dashboard::new().serve().unwrap();
    let (code, body) = http_post(served.addr(), "/api/dead/1-0/discard");
    assert_eq!(code, 403, "{body}");
}

#[test]
fn a_cluster_without_a_traced_client_shows_its_timeline_and_requeues() {
    use crate::cluster::{
        dead_now, fresh_file, fresh_queue, marks, queue_url, redis_url, wait_for, InProcessWorker,
    };
    use multitasking::cluster::Worker;
    let Some(base) = redis_url() else { return };
    let url = queue_url(&base, &fresh_queue("dash-spans"));
    let path = fresh_file("dash-requeue");
    // An untraced client: what the page shows of tasks comes from the
    // workers' span stream.
    let pool = multitasking::ClusterPool::connect_with(&url, 2).unwrap();
    {
        let _refuses =
            InProcessWorker::of(Worker::builder(&url).concurrency(1).allow(["sleep_ms"]));
        for ms in [5u64, 40, 10] {
            get(&pool.submit(sleep_ms, ms).unwrap()).unwrap();
        }
        let refused = get(&pool
            .submit(crate::tasks::mark, (path.display().to_string(), 9))
            .unwrap());
        assert!(refused.is_err());
    }
    let dead = dead_now(&url, 1);
    let served = Dashboard::new()
        .cluster(url.clone())
        .allow_actions(true)
        .serve()
        .unwrap();
    let mut state = serde_json::Value::Null;
    wait_for(
        "the page never showed the tasks from the span stream",
        || {
            let (code, body) = http_get(served.addr(), "/api/state", "");
            state = serde_json::from_str(&body).unwrap_or_default();
            code == 200 && state["slowest"].as_array().is_some_and(|a| a.len() == 3)
        },
    );
    let slowest = &state["slowest"][0];
    assert_eq!(slowest["input"], "40", "{state}");
    assert!(slowest["run_ms"].as_f64().unwrap() >= 35.0, "{state}");
    let lanes = state["timeline"]["lanes"].as_array().unwrap();
    assert_eq!(lanes.len(), 1, "{state}");
    assert_eq!(lanes[0]["bars"].as_array().unwrap().len(), 3, "{state}");
    let shown = &state["dead"][0];
    assert_eq!(shown["requeueable"], true, "{state}");
    // Requeue from the page, with a worker that serves the task now.
    let _serves = InProcessWorker::start(&url, 1, Duration::from_secs(30));
    let entry = &dead[0].entry;
    let (code, body) = http_post(served.addr(), &format!("/api/dead/{entry}/requeue"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"requeued\":true"), "{body}");
    wait_for("the requeued task never ran", || marks(&path) == [9]);
    let (code, body) = http_post(served.addr(), &format!("/api/dead/{entry}/explode"));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("requeue and discard"), "{body}");
}
