//! SVG charts, drawn by hand so the lab needs no plotting stack: a column
//! of panels sharing a time axis.

use std::fmt::Write;

/// One line on a panel.
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
    /// Draw as steps (replica counts) rather than straight segments.
    pub step: bool,
}

pub struct Panel<'a> {
    pub title: &'a str,
    pub series: Vec<Series<'a>>,
    /// A dashed reference line (e.g. the TTFT SLO).
    pub reference: Option<(f64, &'a str)>,
}

const WIDTH: f64 = 900.0;
const PANEL_H: f64 = 170.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 30.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Renders panels over `[0, t_end]` seconds (axis in minutes).
pub fn render(title: &str, t_end: f64, panels: &[Panel<'_>]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_H + GAP) + 20.0;
    let plot_w = WIDTH - LEFT - RIGHT;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let t_end = t_end.max(1.0);
    for (k, panel) in panels.iter().enumerate() {
        let y0 = TOP + k as f64 * (PANEL_H + GAP);
        let y_max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(panel.reference.map(|r| r.0))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.08;
        let x = |t: f64| LEFT + (t / t_end).clamp(0.0, 1.0) * plot_w;
        let y = |v: f64| y0 + PANEL_H - (v / y_max).clamp(0.0, 1.0) * PANEL_H;
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
            LEFT + 4.0,
            y0 - 5.0,
            escape(panel.title)
        );
        for tick in 0..=4 {
            let v = y_max / 1.08 * f64::from(tick) / 4.0;
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
                LEFT - 4.0,
                y(v) + 4.0,
                short(v)
            );
        }
        let minutes = t_end / 60.0;
        let step = [1.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 360.0]
            .into_iter()
            .find(|m| minutes / m <= 8.0)
            .unwrap_or(720.0);
        let mut m = 0.0;
        while m <= minutes + 1e-9 {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{m}</text>"##,
                x(m * 60.0),
                y0 + PANEL_H + 13.0
            );
            m += step;
        }
        if let Some((v, label)) = panel.reference {
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#c00" stroke-dasharray="4 3"/><text x="{}" y="{:.1}" fill="#c00">{}</text>"##,
                LEFT + plot_w,
                y(v),
                y(v),
                LEFT + plot_w + 4.0,
                y(v) + 4.0,
                escape(label)
            );
        }
        for (i, series) in panel.series.iter().enumerate() {
            let mut d = String::new();
            let mut last: Option<f64> = None;
            for &(t, v) in &series.points {
                let v = if v.is_finite() { v } else { 0.0 };
                if let (true, Some(prev)) = (series.step, last) {
                    let _ = write!(d, "L{:.1},{:.1} ", x(t), y(prev));
                }
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if last.is_none() { "M" } else { "L" },
                    x(t),
                    y(v)
                );
                last = Some(v);
            }
            let _ = writeln!(
                s,
                r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.4"/>"#,
                series.color
            );
            let ly = y0 + 12.0 + i as f64 * 14.0;
            let _ = writeln!(
                s,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                LEFT + plot_w + 6.0,
                LEFT + plot_w + 20.0,
                series.color,
                LEFT + plot_w + 24.0,
                ly + 4.0,
                escape(series.label)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">minutes</text></svg>"##,
        LEFT + plot_w / 2.0,
        height - 4.0
    );
    s
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub const PALETTE: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_well_formed_svg_with_every_series() {
        let panel = Panel {
            title: "replicas <ready>",
            series: vec![
                Series {
                    label: "a",
                    color: "#000",
                    points: vec![(0.0, 1.0), (60.0, 3.0)],
                    step: true,
                },
                Series {
                    label: "b",
                    color: "#111",
                    points: vec![(0.0, 2.0), (60.0, f64::NAN)],
                    step: false,
                },
            ],
            reference: Some((2.5, "SLO")),
        };
        let svg = render("t", 60.0, &[panel]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("replicas &lt;ready&gt;"));
        assert!(!svg.contains("NaN"));
    }
}
