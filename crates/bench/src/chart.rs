//! The run as a picture: throughput and p99 latency per second over the whole run, and the
//! sale itself (wins per second and the remaining stock) at the resolution of its sell-out.
//!
//! Hand-written SVG instead of plotters: plotters' default `ttf` feature needs system
//! fontconfig/freetype, and four line charts with readable axes are a page of text. Sizes are
//! bounded: one point per second of at most `RUN_SECONDS_MAX`, and wins in 10 ms steps up to the
//! last win.
//!
//! A flash sale sells out in a fraction of a second and the losers keep coming for a minute:
//! drawn on the run's axis, the sell-out is one vertical step. So the two sale panels get their
//! own time axis, from the start to a little after the last win, with the wins counted per
//! 10 ms (remaining stock: the stock read before the run minus this run's wins, as a step line;
//! the dots are the store's own reads, once a second) and per 100 ms (wins per second).

use std::fmt::Write;

use crate::report::Report;
use crate::timeline::{SecondPoint, WIN_TICKS_PER_SECOND};

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 170.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 80.0;
const GAP: f64 = 64.0;

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Line,
    /// Horizontal then vertical: a value that holds until the next point.
    Steps,
}

struct Panel {
    title: String,
    unit: &'static str,
    colour: &'static str,
    style: Style,
    /// (seconds since the start, value).
    points: Vec<(f64, f64)>,
    /// Extra points drawn as dots (the store's stock reads).
    dots: Vec<(f64, f64)>,
    /// The time axis: 0 to this many seconds.
    x_max: f64,
}

/// The SVG document for `report`.
pub fn svg(report: &Report) -> String {
    let t = &report.timeline;
    let run = report.duration_s.max(t.len() as f64).max(0.001);
    let sale_span = sale_span(report, run);
    let mut panels = vec![
        Panel {
            title: "throughput, whole run".into(),
            unit: "requests/s",
            colour: "#1f77b4",
            style: Style::Line,
            // The last second is partial: its rate is over the part the run covered.
            points: per_second(t, |p| {
                let covered = (report.duration_s - f64::from(p.second)).clamp(0.05, 1.0);
                Some(p.requests as f64 / covered)
            }),
            dots: Vec::new(),
            x_max: run,
        },
        Panel {
            title: "p99 latency, whole run".into(),
            unit: "ms",
            colour: "#d62728",
            style: Style::Line,
            points: per_second(t, |p| (p.requests > 0).then_some(p.p99_ms)),
            dots: Vec::new(),
            x_max: run,
        },
        Panel {
            title: format!(
                "wins per second, in 100 ms steps, first {}",
                seconds(sale_span)
            ),
            unit: "wins/s",
            colour: "#2ca02c",
            style: Style::Steps,
            points: wins_per_second(&report.wins_per_tick, sale_span),
            dots: Vec::new(),
            x_max: sale_span,
        },
    ];
    let stock_dots: Vec<(f64, f64)> = t
        .iter()
        .filter_map(|p| p.available.map(|a| (f64::from(p.second), a as f64)))
        .filter(|&(s, _)| s <= sale_span)
        .collect();
    let sold_out = match report.last_success_s {
        Some(s) => format!(" (last win at {s:.3} s)"),
        None => String::new(),
    };
    panels.push(Panel {
        title: format!(
            "remaining stock, in 10 ms steps, first {}{sold_out}",
            seconds(sale_span)
        ),
        unit: "tickets",
        colour: "#9467bd",
        style: Style::Steps,
        points: match report.available_at_start {
            Some(start) => remaining(start, &report.wins_per_tick, sale_span),
            None => Vec::new(),
        },
        dots: stock_dots,
        x_max: sale_span,
    });

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
        draw_panel(&mut s, p, top);
    }
    s.push_str("</svg>\n");
    s
}

/// The sale panels' time axis: a fifth past the last win (at least 0.2 s), at most the run.
fn sale_span(report: &Report, run: f64) -> f64 {
    match report.last_success_s {
        Some(last) => nice_ceiling((last * 1.2).max(0.2)).min(nice_ceiling(run)),
        None => run,
    }
}

fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

fn per_second(t: &[SecondPoint], f: impl Fn(&SecondPoint) -> Option<f64>) -> Vec<(f64, f64)> {
    t.iter()
        .filter_map(|p| f(p).map(|v| (p.second as f64 + 0.5, v)))
        .collect()
}

/// Wins per second in 100 ms bins, from 0 to `span` seconds (the rate holds over its bin).
fn wins_per_second(ticks: &[u32], span: f64) -> Vec<(f64, f64)> {
    let per_bin = (WIN_TICKS_PER_SECOND / 10) as usize;
    let bins = (span * 10.0 - 1e-9).ceil() as usize;
    let mut points: Vec<(f64, f64)> = (0..bins)
        .map(|b| {
            let n: u32 = ticks.iter().skip(b * per_bin).take(per_bin).sum();
            (b as f64 / 10.0, f64::from(n) * 10.0)
        })
        .collect();
    if let Some(&(_, last)) = points.last() {
        points.push((bins as f64 / 10.0, last));
    }
    points
}

/// `start` minus the wins so far, at the end of each 10 ms tick up to `span` seconds.
fn remaining(start: u64, ticks: &[u32], span: f64) -> Vec<(f64, f64)> {
    let n = (span * WIN_TICKS_PER_SECOND as f64 - 1e-9).ceil() as usize;
    let mut left = start as f64;
    let mut points = vec![(0.0, left)];
    for i in 0..n {
        left -= f64::from(ticks.get(i).copied().unwrap_or(0));
        points.push(((i + 1) as f64 / WIN_TICKS_PER_SECOND as f64, left.max(0.0)));
    }
    points
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

/// The top of a value axis: `v` rounded up to a whole number of round tick steps.
fn axis_max(v: f64) -> f64 {
    let step = nice_ceiling(v / 5.0);
    ((v / step - 1e-9).ceil() * step).max(step)
}

/// About five round tick values from 0 to `max`.
fn ticks(max: f64) -> Vec<f64> {
    let step = nice_ceiling(max / 5.0);
    (0..=((max / step + 1e-9).floor() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

fn draw_panel(s: &mut String, p: &Panel, top: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let max = p
        .points
        .iter()
        .chain(&p.dots)
        .map(|&(_, v)| v)
        .fold(0.0, f64::max);
    let y_max = axis_max(max * 1.05);
    let bottom = top + PANEL_HEIGHT;
    let x = |sec: f64| LEFT + sec.clamp(0.0, p.x_max) / p.x_max * plot_w;
    let y = |v: f64| bottom - v / y_max * PANEL_HEIGHT;
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-weight="bold">{} ({})</text>"#,
        top - 10.0,
        escape(&p.title),
        p.unit
    );
    for v in ticks(y_max) {
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            y(v),
            y(v),
            LEFT - 8.0,
            y(v) + 4.0,
            label(v)
        );
    }
    for sec in ticks(p.x_max) {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{top}" y2="{bottom}" stroke="#f0f0f0"/><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            x(sec),
            x(sec),
            x(sec),
            bottom + 16.0,
            time_label(sec, p.x_max)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">seconds since the start</text>"##,
        LEFT + plot_w / 2.0,
        bottom + 34.0
    );
    let mut pts = String::new();
    let mut prev: Option<(f64, f64)> = None;
    for &(sec, v) in p.points.iter().filter(|(sec, _)| *sec <= p.x_max + 1e-9) {
        if let (Style::Steps, Some((_, pv))) = (p.style, prev) {
            let _ = write!(pts, "{:.1},{:.1} ", x(sec), y(pv));
        }
        let _ = write!(pts, "{:.1},{:.1} ", x(sec), y(v));
        prev = Some((sec, v));
    }
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
        p.colour,
        pts.trim_end()
    );
    for &(sec, v) in &p.dots {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="#333"><title>the store read {v:.0} at {sec:.0} s</title></circle>"##,
            x(sec),
            y(v)
        );
    }
}

fn time_label(sec: f64, span: f64) -> String {
    if span <= 2.0 {
        format!("{sec:.2}")
    } else if span <= 20.0 {
        format!("{sec:.1}")
    } else {
        format!("{sec:.0}")
    }
}

fn label(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 10_000.0 {
        format!("{}k", trim(v / 1e3))
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_values_and_ticks() {
        assert_eq!(nice_ceiling(0.52 * 1.2), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(10_300.0), 20_000.0);
        assert_eq!(
            ticks(10_000.0),
            vec![0.0, 2_000.0, 4_000.0, 6_000.0, 8_000.0, 10_000.0]
        );
        assert_eq!(axis_max(10_500.0), 12_500.0);
        assert_eq!(axis_max(0.0), 1.0);
        assert_eq!(label(2_500_000.0), "2.5M");
        assert_eq!(label(25_000.0), "25k");
        assert_eq!(label(0.25), "0.25");
    }

    #[test]
    fn the_stock_falls_by_each_tick_of_wins() {
        let ticks = [5u32, 0, 3];
        let r = remaining(10, &ticks, 0.05);
        assert_eq!(r[0], (0.0, 10.0));
        assert_eq!(r[1], (0.01, 5.0));
        assert_eq!(r[3], (0.03, 2.0));
        assert_eq!(r.last().unwrap().1, 2.0);
        let w = wins_per_second(&[1; 25], 0.3);
        assert_eq!(w[0], (0.0, 100.0));
        assert_eq!(w[2], (0.2, 50.0));
    }
}
