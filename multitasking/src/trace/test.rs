//! Tests of the tracer and its exporters: the files are well-formed and
//! the numbers add up.

use std::time::Duration;

use super::chrome::to_chrome_json;
use super::report::{fit_amdahl, percentile, Report};
use super::svg::{speedup_chart_svg, timeline_svg, Series};
use super::{TaskEvent, Trace, Tracer};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn event(worker: &str, s: u64, start: u64, end: u64, ok: bool) -> TaskEvent {
    TaskEvent {
        task: "demo::task<&>".into(),
        id: 0,
        worker: worker.into(),
        pid: 1,
        host: "h".into(),
        submitted: ms(s),
        started: ms(start),
        finished: ms(end),
        ok,
        peak_rss: Some(1 << 20),
        cpu: Some(ms(end - start)),
        input: Some("[\"x\"]".into()),
        allocated: Some(2048),
    }
}

fn sample() -> Trace {
    Trace {
        events: vec![
            event("w-0", 0, 0, 40, true),
            event("w-1", 0, 1, 41, true),
            event("w-0", 0, 40, 80, false),
            event("w-1", 1, 41, 79, true),
        ],
        wall: ms(80),
    }
}

#[test]
fn chrome_json_has_a_slice_per_task() {
    let json: serde_json::Value = serde_json::from_str(&to_chrome_json(&sample())).unwrap();
    let events = json["traceEvents"].as_array().expect("traceEvents");
    let slices: Vec<_> = events.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(slices.len(), 4);
    let names: Vec<_> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["w-0", "w-1"]);
    assert_eq!(slices[0]["dur"].as_f64(), Some(40_000.0));
}

#[test]
fn svgs_parse_and_have_a_rect_per_task() {
    let svg = timeline_svg(&sample());
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let rects = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some("task"))
        .count();
    assert_eq!(rects, 4);
    assert!(svg.contains("demo::task&lt;&amp;&gt;"), "text is escaped");

    let chart = speedup_chart_svg(
        "cpu <primes>",
        &[
            Series {
                name: "threads".into(),
                points: vec![(1, 1.0), (2, 1.9), (4, 1.95)],
            },
            Series {
                name: "processes".into(),
                points: vec![(1, 0.98), (2, 1.93)],
            },
        ],
    );
    let doc = roxmltree::Document::parse(&chart).expect("well-formed SVG");
    assert_eq!(
        doc.descendants()
            .filter(|n| n.attribute("class") == Some("series"))
            .count(),
        2
    );
    assert_eq!(
        doc.descendants()
            .filter(|n| n.attribute("class") == Some("ideal"))
            .count(),
        1
    );
}

#[test]
fn the_numbers_add_up() {
    let t = sample();
    for (w, busy) in t.busy_by_worker() {
        assert!(busy <= t.wall, "{w} busy {busy:?} > wall {:?}", t.wall);
    }
    let serial = ms(158);
    let r = Report::from_trace(&t, Some(serial), 2);
    assert_eq!(r.speedup, Some(serial.as_secs_f64() / 0.080));
    assert!((r.efficiency.unwrap() - r.speedup.unwrap() / 2.0).abs() < 1e-12);
    assert!((r.busy_s - 0.158).abs() < 1e-9);
    assert!(r.utilisation <= 1.0 && r.utilisation > 0.9);
    assert_eq!(r.failed, 1);
    assert!(r.to_markdown().contains("| speedup | 1.98x |"));
}

#[test]
fn amdahl_fit_recovers_known_fractions() {
    for s in [0.0, 0.1, 0.5] {
        let pts: Vec<(usize, f64)> = [1usize, 2, 4, 8]
            .iter()
            .map(|&n| (n, 1.0 / (s + (1.0 - s) / n as f64)))
            .collect();
        let fit = fit_amdahl(&pts).unwrap();
        assert!((fit - s).abs() < 0.01, "{s} fitted as {fit}");
    }
    assert_eq!(fit_amdahl(&[(1, 1.0)]), None);
}

#[test]
fn percentiles_use_the_nearest_rank() {
    let v: Vec<Duration> = (1..=100).map(ms).collect();
    assert_eq!(percentile(&v, 50.0), ms(50));
    assert_eq!(percentile(&v, 99.0), ms(99));
    assert_eq!(percentile(&v, 100.0), ms(100));
    assert_eq!(percentile(&[], 50.0), Duration::ZERO);
}

#[test]
fn a_disabled_tracer_records_nothing() {
    let t = Tracer::disabled();
    t.record(event("w", 0, 0, 1, true));
    assert!(t.snapshot().events.is_empty());
    let t = Tracer::new();
    t.record(event("w", 0, 0, 1, true));
    t.record(event("w", 0, 1, 2, true));
    let s = t.snapshot();
    assert_eq!(
        s.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![0, 1]
    );
}
