//! The run as a picture: throughput, p99 latency and the sale's remaining stock per second.
//!
//! Hand-written SVG (three stacked panels of polylines with their axes) instead of plotters:
//! plotters' default `ttf` feature needs system fontconfig/freetype, and three line charts are
//! a few dozen lines of text. The timeline it draws is bounded (one point per second of at most
//! `RUN_SECONDS_MAX`), so the file is too.

use std::fmt::Write;

use crate::report::Report;
use crate::timeline::SecondPoint;

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 180.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 80.0;
const GAP: f64 = 50.0;

struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    colour: &'a str,
    /// (second, value) points; a missing value is skipped.
    points: Vec<(f64, f64)>,
}

/// The SVG document for `report`.
pub fn svg(report: &Report) -> String {
    let t = &report.timeline;
    let stock_title = match report.last_success_s {
        Some(s) => format!("remaining stock, read once a second (last success at {s:.2} s)"),
        None => "remaining stock, read once a second".to_string(),
    };
    let panels = [
        Panel {
            title: "throughput",
            unit: "req/s",
            colour: "#1f77b4",
            // The last second is partial: its rate is over the part the run covered.
            points: series(t, |p| {
                let covered = (report.duration_s - f64::from(p.second)).clamp(0.05, 1.0);
                Some(p.requests as f64 / covered)
            }),
        },
        Panel {
            title: "p99 latency",
            unit: "ms",
            colour: "#d62728",
            points: series(t, |p| (p.requests > 0).then_some(p.p99_ms)),
        },
        Panel {
            title: &stock_title,
            unit: "tickets",
            colour: "#2ca02c",
            points: series(t, |p| p.available.map(|a| a as f64)),
        },
    ];
    let seconds = t.len().max(1) as f64;
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="24" font-size="15">ticketrush bench: sale {}, {} users, {} connections</text>"#,
        escape(&report.sale),
        report.users,
        report.connections,
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="44">{} requests in {:.1} s: {:.0} req/s, p99 {:.2} ms; succeeded {}, sold out {}, errors {}; check {}</text>"#,
        report.requests,
        report.duration_s,
        report.rps,
        report.latency_ms.p99,
        report.succeeded,
        report.sold_out,
        report.errors,
        report.check.verdict
    );
    for (i, p) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_HEIGHT + GAP);
        draw_panel(&mut s, p, top, seconds);
    }
    s.push_str("</svg>\n");
    s
}

fn series(t: &[SecondPoint], f: impl Fn(&SecondPoint) -> Option<f64>) -> Vec<(f64, f64)> {
    t.iter()
        .filter_map(|p| f(p).map(|v| (p.second as f64 + 0.5, v)))
        .collect()
}

fn draw_panel(s: &mut String, p: &Panel, top: f64, seconds: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let max = p.points.iter().map(|&(_, v)| v).fold(0.0, f64::max);
    let y_max = if max > 0.0 { max * 1.1 } else { 1.0 };
    let bottom = top + PANEL_HEIGHT;
    let x = |sec: f64| LEFT + sec / seconds * plot_w;
    let y = |v: f64| bottom - v / y_max * PANEL_HEIGHT;
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{} ({})</text>"#,
        top - 8.0,
        p.title,
        p.unit
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##
    );
    for frac in [0.0, 0.5, 1.0] {
        let v = y_max * frac;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y(v) + 4.0,
            label(v)
        );
    }
    let step = (seconds / 10.0).ceil().max(1.0);
    let mut sec = 0.0;
    while sec <= seconds {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{sec:.0} s</text>"#,
            x(sec),
            bottom + 16.0
        );
        sec += step;
    }
    let pts: Vec<String> = p
        .points
        .iter()
        .map(|&(sec, v)| format!("{:.1},{:.1}", x(sec), y(v)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
        p.colour,
        pts.join(" ")
    );
}

fn label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
