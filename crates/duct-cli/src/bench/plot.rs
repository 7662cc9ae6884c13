//! `--plot FILE.svg`: ping-pong latency by percentile, one panel per case, one line per
//! system, written as plain SVG (no plotting dependency).
//!
//! The x axis is the percentile on the usual HDR scale, log10(1 / (1 − q)), so that 90%,
//! 99%, 99.9%, ... are evenly spaced and the tail gets the room it deserves; the y axis is
//! the round-trip time in µs on a log scale (tails on a shared VM reach 1000× the median,
//! which would flatten a linear axis). Each line stops where its run had too few samples
//! to say more. With `--reliable`, duct on a reliable channel is a dashed line in duct's
//! colour.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::bench::report::CaseResult;
use crate::bench::spec::{format_size, Pattern};
use crate::bench::stats::Summary;

const PANEL_W: f64 = 720.0;
const PANEL_H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 110.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 44.0;
const COLORS: [&str; 2] = ["#1f77b4", "#ff7f0e"];
/// The name of the `--reliable` line, drawn dashed in duct's colour.
const RELIABLE_LINE: &str = "duct reliable";

fn percentile_label(decade: u32) -> String {
    match decade {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        2 => "99%".to_string(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// The decade bounds (as powers of 10) that enclose `[lo, hi]`, at least one decade apart.
fn decade_bounds(lo: f64, hi: f64) -> (i32, i32) {
    let lo = if lo > 0.0 && lo.is_finite() { lo } else { 1.0 };
    let hi = if hi > lo && hi.is_finite() { hi } else { lo };
    let bottom = lo.log10().floor() as i32;
    let top = (hi.log10().ceil() as i32).max(bottom + 1);
    (bottom, top)
}

/// How many decades of percentiles `count` samples can show (1 to 6).
fn decades(count: u64) -> u32 {
    ((count.max(1) as f64).log10().floor() as u32).clamp(1, 6)
}

/// One line of a panel: the system's name and its round-trip times.
type Series<'a> = (&'a str, &'a Histogram<u64>);

/// The SVG document for the ping-pong and mixed cases among `cases` (a ping-pong case's
/// lines: duct, raw, then duct reliable with `--reliable`; a mixed case's: duct idle, duct
/// loaded, raw); `None` if there are none.
pub fn to_svg(cases: &[CaseResult]) -> Option<String> {
    let panels: Vec<(String, Vec<Series<'_>>)> = cases
        .iter()
        .filter_map(|case| {
            let mixed = case.pattern == Pattern::Mixed;
            // A mixed case's lines are named by load, not only by system.
            fn named<'a>(
                s: &'a Summary,
                mixed: bool,
                name: &'static str,
            ) -> (&'static str, &'a Summary) {
                (if mixed { name } else { s.system.name() }, s)
            }
            let series: Vec<Series<'_>> = std::iter::once(named(&case.duct, mixed, "duct idle"))
                .chain(
                    case.loaded
                        .iter()
                        .map(|l| named(&l.duct, mixed, "duct loaded")),
                )
                .chain(case.raw.iter().map(|r| named(r, mixed, "raw (pingpong)")))
                .chain(case.reliable.iter().map(|r| (RELIABLE_LINE, &r.duct)))
                .filter_map(|(name, s)| s.rtt.as_ref().map(|h| (name, h)))
                .filter(|(_, h)| !h.is_empty())
                .collect();
            (!series.is_empty()).then(|| {
                let (what, detail) = if mixed {
                    ("mixed", ", realtime channel")
                } else {
                    ("pingpong", "")
                };
                (
                    format!(
                        "{} {what} {}{detail}: round-trip time by percentile",
                        case.transport.name(),
                        format_size(case.size)
                    ),
                    series,
                )
            })
        })
        .collect();
    if panels.is_empty() {
        return None;
    }
    let height = PANEL_H * panels.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_W}" height="{height}" viewBox="0 0 {PANEL_W} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, (title, series)) in panels.iter().enumerate() {
        panel(&mut svg, PANEL_H * i as f64, title, series);
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

fn panel(svg: &mut String, y0: f64, title: &str, series: &[Series<'_>]) {
    let max_decades = series
        .iter()
        .map(|(_, h)| decades(h.len()))
        .max()
        .unwrap_or(1);
    let top_q = 1.0 - 10f64.powi(-(max_decades as i32));
    let lowest_us = series
        .iter()
        .map(|(_, h)| h.min() as f64 / 1000.0)
        .fold(f64::INFINITY, f64::min);
    let highest_us = series
        .iter()
        .map(|(_, h)| h.value_at_quantile(top_q) as f64 / 1000.0)
        .fold(0.0, f64::max);
    let (bottom, top) = decade_bounds(lowest_us, highest_us);
    let (x_left, x_right) = (LEFT, PANEL_W - RIGHT);
    let (y_top, y_bottom) = (y0 + TOP, y0 + PANEL_H - BOTTOM);
    let x_of = |d: f64| x_left + (x_right - x_left) * d / max_decades as f64;
    let y_of = |us: f64| {
        let l = us.max(10f64.powi(bottom)).log10();
        let f = ((l - bottom as f64) / (top - bottom) as f64).min(1.0);
        y_bottom - (y_bottom - y_top) * f
    };

    let _ = writeln!(
        svg,
        r#"<text x="{x_left}" y="{}" font-size="14" font-weight="bold">{title}</text>"#,
        y0 + 22.0
    );
    // Grid and axes.
    for d in 0..=max_decades {
        let x = x_of(d as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y_top:.1}" x2="{x:.1}" y2="{y_bottom:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y_bottom + 16.0,
            percentile_label(d)
        );
    }
    for decade in bottom..=top {
        for m in [1.0, 2.0, 5.0] {
            let us = m * 10f64.powi(decade);
            if decade == top && m > 1.0 {
                break;
            }
            let y = y_of(us);
            let stroke = if m == 1.0 { "#ccc" } else { "#eee" };
            let _ = writeln!(
                svg,
                r##"<line x1="{x_left:.1}" y1="{y:.1}" x2="{x_right:.1}" y2="{y:.1}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x_left - 6.0,
                y + 4.0,
                trim_float(us)
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{x_left:.1}" y="{y_top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        x_right - x_left,
        y_bottom - y_top
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        (x_left + x_right) / 2.0,
        y_bottom + 34.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">RTT (µs, log scale)</text>"#,
        (y_top + y_bottom) / 2.0,
        (y_top + y_bottom) / 2.0
    );
    // Lines.
    const STEPS: u32 = 240;
    for (i, (name, h)) in series.iter().enumerate() {
        let (color, dash) = if *name == RELIABLE_LINE {
            (COLORS[0], r#" stroke-dasharray="6 4""#)
        } else {
            (COLORS[i % COLORS.len()], "")
        };
        let limit = decades(h.len()) as f64;
        let mut points = String::new();
        for step in 0..=STEPS {
            let d = max_decades as f64 * step as f64 / STEPS as f64;
            if d > limit {
                break;
            }
            let q = 1.0 - 10f64.powf(-d);
            let us = h.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(points, "{:.1},{:.1} ", x_of(d), y_of(us));
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            points.trim_end()
        );
        let ly = y_top + 16.0 + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            x_right + 12.0,
            x_right + 36.0,
            x_right + 42.0,
            ly + 4.0
        );
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::spec::{Pattern, System, Transport};
    use crate::bench::stats::{summarize, RunResult};
    use crate::bench::workload::new_rtt_histogram;

    #[test]
    fn helpers() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(3), "99.9%");
        assert_eq!(percentile_label(5), "99.999%");
        assert_eq!(decade_bounds(7.3, 4000.0), (0, 4));
        assert_eq!(decade_bounds(0.2, 0.9), (-1, 0));
        assert_eq!(decade_bounds(10.0, 10.0), (1, 2));
        assert_eq!(decade_bounds(0.0, f64::NAN), (0, 1));
        assert_eq!(decades(10), 1);
        assert_eq!(decades(50_000), 4);
        assert_eq!(trim_float(2.5), "2.5");
        assert_eq!(trim_float(10.0), "10");
    }

    #[test]
    fn svg_has_a_line_per_system() {
        let mut h = new_rtt_histogram();
        for v in 1..=10_000u64 {
            h.record(5_000 + v).unwrap();
        }
        let s = |system| {
            summarize(
                system,
                &[RunResult {
                    rtt: Some(h.clone()),
                    messages: h.len(),
                    msgs_per_sec: 1.0,
                    allocs_per_msg: 0.0,
                    copies: None,
                }],
                64,
            )
        };
        let case = CaseResult {
            transport: Transport::Uds,
            pattern: Pattern::PingPong,
            size: 64,
            duct: s(System::Duct),
            raw: Some(s(System::Raw)),
            ratios: None,
            loaded: None,
            reliable: None,
            scale: None,
        };
        let svg = to_svg(std::slice::from_ref(&case)).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("uds pingpong 64 B"));
        assert!(svg.contains("99.9%"));
        assert!(!svg.contains("stroke-dasharray"));
        assert!(to_svg(&[]).is_none());
        // --reliable: a third, dashed line in duct's colour.
        let reliable = CaseResult {
            reliable: Some(crate::bench::report::Reliable {
                duct: s(System::Duct),
                vs_realtime: crate::bench::stats::Ratios::PingPong {
                    p50: 1.0,
                    p99: 1.0,
                    p999: 1.0,
                    max: 1.0,
                },
                vs_raw: None,
            }),
            ..case
        };
        let svg = to_svg(&[reliable]).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains(">duct reliable</text>"), "{svg}");
        assert!(svg.contains(&format!(
            r#"stroke="{}" stroke-width="2" stroke-dasharray"#,
            COLORS[0]
        )));
    }
}
