//! Hand-written SVG: a timeline with a lane per worker, and a speedup chart
//! with a line per executor beside the ideal.
//!
//! No plotting crate: the shapes are few, and hand-written SVG has no font
//! or native dependency. Text is XML-escaped; every task rectangle carries a
//! `<title>` tooltip.

use std::fmt::Write as _;

use crate::trace::Trace;

/// Colours for series and lanes, in order.
const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

/// `s` with XML's special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A "nice" tick step for a range of `span` with about `n` ticks.
fn tick_step(span: f64, n: f64) -> f64 {
    if span <= 0.0 {
        return 1.0;
    }
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The trace as an SVG timeline: a lane per worker, a rectangle per task
/// (failed ones in red), a time axis in milliseconds.
pub fn timeline_svg(trace: &Trace) -> String {
    let trace = trace.trimmed();
    let workers = trace.workers();
    let (left, top, lane, width) = (160.0, 40.0, 28.0, 900.0);
    let height = top + lane * workers.len().max(1) as f64 + 50.0;
    let span_ms = (trace.wall.as_secs_f64() * 1e3).max(1e-3);
    let x = |ms: f64| left + ms / span_ms * width;
    let mut s = String::new();
    let total_w = left + width + 20.0;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" viewBox="0 0 {total_w} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="14">timeline: {} tasks on {} workers, {span_ms:.1} ms</text>"#,
        trace.events.len(),
        workers.len()
    );
    for (i, w) in workers.iter().enumerate() {
        let y = top + lane * i as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{y}" width="{width}" height="{}" fill="{}"/>"##,
            lane - 4.0,
            if i % 2 == 0 { "#f4f4f4" } else { "#fafafa" }
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + lane / 2.0 + 2.0,
            escape(w)
        );
    }
    for e in &trace.events {
        let i = workers.iter().position(|w| *w == e.worker).unwrap_or(0);
        let y = top + lane * i as f64 + 2.0;
        let x0 = x(e.started.as_secs_f64() * 1e3);
        let w = (x(e.finished.as_secs_f64() * 1e3) - x0).max(0.5);
        let fill = if e.ok {
            PALETTE[i % PALETTE.len()]
        } else {
            "#d62728"
        };
        let _ = writeln!(
            s,
            r#"<rect class="task" x="{x0:.2}" y="{y}" width="{w:.2}" height="{}" fill="{fill}" stroke="white" stroke-width="0.5"><title>{} #{}: {:.3} ms, waited {:.3} ms{}</title></rect>"#,
            lane - 8.0,
            escape(&e.task),
            e.id,
            e.run_time().as_secs_f64() * 1e3,
            e.queue_wait().as_secs_f64() * 1e3,
            if e.ok { "" } else { ", failed" }
        );
    }
    let axis_y = top + lane * workers.len().max(1) as f64 + 6.0;
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="black"/>"#,
        left + width
    );
    let step = tick_step(span_ms, 8.0);
    let mut t = 0.0;
    while t <= span_ms + 1e-9 {
        let tx = x(t);
        let _ = writeln!(
            s,
            r#"<line x1="{tx:.2}" y1="{axis_y}" x2="{tx:.2}" y2="{}" stroke="black"/><text x="{tx:.2}" y="{}" text-anchor="middle">{}</text>"#,
            axis_y + 5.0,
            axis_y + 18.0,
            fmt_num(t)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">ms</text>"#,
        left + width / 2.0,
        axis_y + 34.0
    );
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}")
    }
}

/// One line of a speedup chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend label (an executor).
    pub name: String,
    /// (workers, speedup) points.
    pub points: Vec<(usize, f64)>,
}

/// A speedup chart: speedup against workers, a line per series, and the
/// ideal (speedup = workers) dashed.
pub fn speedup_chart_svg(title: &str, series: &[Series]) -> String {
    let (left, top, width, height) = (60.0, 40.0, 560.0, 320.0);
    let max_w = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_s = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(max_w, f64::max)
        .max(1.0);
    let y_top = (max_s * 1.1).ceil();
    let x = |w: f64| left + (w - 1.0).max(0.0) / (max_w - 1.0).max(1.0) * width;
    let y = |v: f64| top + height - v / y_top * height;
    let (total_w, total_h) = (left + width + 190.0, top + height + 50.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="14">{}</text>"#,
        escape(title)
    );
    // Axes.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        top + height,
        left + width,
        top + height,
        top + height
    );
    let step = tick_step(y_top, 6.0);
    let mut v = 0.0;
    while v <= y_top + 1e-9 {
        let ty = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{ty:.2}" x2="{}" y2="{ty:.2}" stroke="#ddd"/><text x="{}" y="{:.2}" text-anchor="end">{}</text>"##,
            left,
            left + width,
            left - 6.0,
            ty + 4.0,
            fmt_num(v)
        );
        v += step;
    }
    let mut ws: Vec<usize> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    ws.sort_unstable();
    ws.dedup();
    for w in &ws {
        let tx = x(*w as f64);
        let _ = writeln!(
            s,
            r#"<text x="{tx:.2}" y="{}" text-anchor="middle">{w}</text>"#,
            top + height + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">workers</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">speedup</text>"#,
        left + width / 2.0,
        top + height + 38.0,
        top + height / 2.0,
        top + height / 2.0
    );
    // The ideal line.
    let _ = writeln!(
        s,
        r##"<line class="ideal" x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="#888" stroke-dasharray="6 4"/>"##,
        x(1.0),
        y(1.0),
        x(max_w),
        y(max_w.min(y_top))
    );
    for (i, ser) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut pts = ser.points.clone();
        pts.sort_by_key(|p| p.0);
        let path: Vec<String> = pts
            .iter()
            .map(|(w, v)| format!("{:.2},{:.2}", x(*w as f64), y(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="series" points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (w, v) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="{colour}"><title>{}: {w} workers, {v:.2}x</title></circle>"#,
                x(*w as f64),
                y(*v),
                escape(&ser.name)
            );
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + width + 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&ser.name)
        );
    }
    let ly = top + 10.0 + 20.0 * series.len() as f64;
    let lx = left + width + 20.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="#888" stroke-dasharray="6 4"/><text x="{}" y="{}">ideal</text>"##,
        lx + 24.0,
        lx + 30.0,
        ly + 4.0
    );
    s.push_str("</svg>\n");
    s
}
