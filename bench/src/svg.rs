//! Hand-written SVG charts (no plotting dependency): CDFs, line charts and
//! grouped bar charts, with dashed reference lines for the thesis's figures
//! and the targets.

use std::fmt::Write as _;

const W: f64 = 980.0;
const H: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 360.0;
const TOP: f64 = 46.0;
const BOTTOM: f64 = 56.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// A dashed reference line: at `value` on the value axis, labelled.
#[derive(Debug, Clone)]
pub struct RefLine {
    pub label: String,
    pub value: f64,
}

impl RefLine {
    pub fn new(label: impl Into<String>, value: f64) -> RefLine {
        RefLine {
            label: label.into(),
            value,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(mut lo: f64, mut hi: f64, log: bool) -> Axis {
        if log {
            lo = lo.max(1e-9);
            hi = hi.max(lo * 10.0);
            lo = 10f64.powf(lo.log10().floor());
            hi = 10f64.powf(hi.log10().ceil());
        } else {
            if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
                hi = lo + 1.0;
            }
            let step = nice_step((hi - lo) / 5.0);
            lo = (lo / step).floor() * step;
            hi = (hi / step).ceil() * step;
        }
        Axis { lo, hi, log }
    }

    /// 0..1 along the axis.
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            let v = v.max(self.lo * 1e-3);
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (
                self.lo.log10().round() as i32,
                self.hi.log10().round() as i32,
            );
            (a..=b).map(|e| 10f64.powi(e)).collect()
        } else {
            let step = nice_step((self.hi - self.lo) / 5.0);
            let n = ((self.hi - self.lo) / step).round() as usize;
            (0..=n).map(|i| self.lo + step * i as f64).collect()
        }
    }
}

fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

/// A compact number for tick labels.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 && (v / 1e6).fract() == 0.0 {
        format!("{}M", v / 1e6)
    } else if a >= 1e4 && (v / 1e3).fract() == 0.0 {
        format!("{}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}").trim_end_matches(".0").to_string()
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Canvas {
    out: String,
    x: Axis,
    y: Axis,
}

impl Canvas {
    fn new(title: &str, x: Axis, y: Axis, x_label: &str, y_label: &str) -> Canvas {
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            W / 2.0,
            esc(title)
        );
        let mut c = Canvas { out, x, y };
        c.axes(x_label, y_label);
        c
    }

    fn px(&self, v: f64) -> f64 {
        LEFT + self.x.frac(v) * (W - LEFT - RIGHT)
    }

    fn py(&self, v: f64) -> f64 {
        H - BOTTOM - self.y.frac(v) * (H - TOP - BOTTOM)
    }

    fn axes(&mut self, x_label: &str, y_label: &str) {
        let (x0, x1, y0, y1) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
        for t in self.x.ticks() {
            let x = self.px(t);
            let _ = writeln!(
                self.out,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + 16.0,
                fmt_num(t)
            );
        }
        for t in self.y.ticks() {
            let y = self.py(t);
            let _ = writeln!(
                self.out,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                y + 4.0,
                fmt_num(t)
            );
        }
        let _ = writeln!(
            self.out,
            r#"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="black"/>"#,
            x1 - x0,
            y0 - y1
        );
        let _ = writeln!(
            self.out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            H - 14.0,
            esc(x_label)
        );
        let _ = writeln!(
            self.out,
            r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
            (y0 + y1) / 2.0,
            (y0 + y1) / 2.0,
            esc(y_label)
        );
    }

    fn legend(&mut self, i: usize, label: &str, color: &str, dashed: bool) {
        let x = W - RIGHT + 14.0;
        let y = TOP + 10.0 + 20.0 * i as f64;
        let dash = if dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            self.out,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2.5"{dash}/><text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0,
            esc(label)
        );
    }

    fn vline(&mut self, r: &RefLine, color: &str) {
        if self.x.frac(r.value) < 0.0 || self.x.frac(r.value) > 1.0 {
            return;
        }
        let x = self.px(r.value);
        let _ = writeln!(
            self.out,
            r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
            H - BOTTOM,
            TOP
        );
    }

    fn hline(&mut self, r: &RefLine, color: &str) {
        if self.y.frac(r.value) < 0.0 || self.y.frac(r.value) > 1.0 {
            return;
        }
        let y = self.py(r.value);
        let _ = writeln!(
            self.out,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
            W - RIGHT
        );
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

fn ref_color(i: usize) -> &'static str {
    ["#555555", "#aa8800", "#008888", "#aa00aa"][i % 4]
}

/// Cumulative distributions of `series` (name, samples), with vertical
/// reference lines.
pub fn cdf(
    title: &str,
    x_label: &str,
    series: &[(String, Vec<f64>)],
    refs: &[RefLine],
    log_x: bool,
) -> String {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .chain(refs.iter().map(|r| r.value))
        .filter(|v| v.is_finite() && (!log_x || *v > 0.0))
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let x = Axis::new(if log_x { lo } else { lo.min(0.0) }, hi, log_x);
    let y = Axis {
        lo: 0.0,
        hi: 1.0,
        log: false,
    };
    let mut c = Canvas::new(title, x, y, x_label, "fraction of samples ≤ x");
    let mut legend = 0;
    for (i, r) in refs.iter().enumerate() {
        let color = ref_color(i);
        c.vline(r, color);
        c.legend(legend, &r.label, color, true);
        legend += 1;
    }
    for (i, (name, samples)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let s = crate::stats::sorted(samples);
        if s.is_empty() {
            continue;
        }
        let n = s.len() as f64;
        let mut d = format!("M{:.1},{:.1}", c.px(s[0]), c.py(0.0));
        for (k, v) in s.iter().enumerate() {
            let _ = write!(
                d,
                " L{:.1},{:.1} L{:.1},{:.1}",
                c.px(*v),
                c.py(k as f64 / n),
                c.px(*v),
                c.py((k + 1) as f64 / n)
            );
        }
        let _ = writeln!(
            c.out,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>"#
        );
        c.legend(legend, &format!("{name} (n={})", s.len()), color, false);
        legend += 1;
    }
    c.finish()
}

/// Lines through points (x, y) per series, markers at the points.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    refs: &[RefLine],
    log_x: bool,
) -> String {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let fold = |f: fn(f64, f64) -> f64, init: f64, sel: fn(&(f64, f64)) -> f64| {
        pts.iter().map(sel).filter(|v| v.is_finite()).fold(init, f)
    };
    let (xlo, xhi) = (
        fold(f64::min, f64::INFINITY, |p| p.0),
        fold(f64::max, f64::NEG_INFINITY, |p| p.0),
    );
    let yhi = fold(f64::max, f64::NEG_INFINITY, |p| p.1).max(
        refs.iter()
            .map(|r| r.value)
            .fold(f64::NEG_INFINITY, f64::max),
    );
    let (xlo, xhi) = if xlo.is_finite() {
        (xlo, xhi)
    } else {
        (1.0, 10.0)
    };
    let yhi = if yhi.is_finite() { yhi * 1.05 } else { 1.0 };
    let x = Axis::new(xlo, xhi, log_x);
    let y = Axis::new(0.0, yhi, false);
    let mut c = Canvas::new(title, x, y, x_label, y_label);
    let mut legend = 0;
    for (i, r) in refs.iter().enumerate() {
        let color = ref_color(i);
        c.hline(r, color);
        c.legend(legend, &r.label, color, true);
        legend += 1;
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut d = String::new();
        for (k, (px, py)) in points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if k == 0 { "M" } else { "L" },
                c.px(*px),
                c.py(*py)
            );
        }
        let _ = writeln!(
            c.out,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>"#
        );
        for (px, py) in points {
            let _ = writeln!(
                c.out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                c.px(*px),
                c.py(*py)
            );
        }
        c.legend(legend, name, color, false);
        legend += 1;
    }
    c.finish()
}

/// One bar: its value and the (min, max) of repetitions, if any.
#[derive(Debug, Clone)]
pub struct Bar {
    pub series: String,
    pub value: f64,
    pub range: Option<(f64, f64)>,
}

/// Grouped bars (one group per label), with horizontal reference lines.
pub fn bars(title: &str, y_label: &str, groups: &[(String, Vec<Bar>)], refs: &[RefLine]) -> String {
    let yhi = groups
        .iter()
        .flat_map(|(_, b)| {
            b.iter()
                .map(|b| b.range.map_or(b.value, |r| r.1.max(b.value)))
        })
        .chain(refs.iter().map(|r| r.value))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let x = Axis {
        lo: 0.0,
        hi: 1.0,
        log: false,
    };
    let y = Axis::new(0.0, if yhi > 0.0 { yhi * 1.1 } else { 1.0 }, false);
    let mut c = Canvas::new(title, x, y, "", y_label);
    // The canvas drew x ticks 0..1; cover them (bars have category labels).
    let _ = writeln!(
        c.out,
        r#"<rect x="{}" y="{}" width="{}" height="20" fill="white"/>"#,
        LEFT - 20.0,
        H - BOTTOM + 2.0,
        W - LEFT - RIGHT + 40.0
    );
    let mut names: Vec<String> = Vec::new();
    for (_, bs) in groups {
        for b in bs {
            if !names.contains(&b.series) {
                names.push(b.series.clone());
            }
        }
    }
    let plot_w = W - LEFT - RIGHT;
    let gw = plot_w / groups.len().max(1) as f64;
    let bw = (gw * 0.8) / names.len().max(1) as f64;
    for (gi, (label, bs)) in groups.iter().enumerate() {
        let gx = LEFT + gw * gi as f64 + gw * 0.1;
        let _ = writeln!(
            c.out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + gw * (gi as f64 + 0.5),
            H - BOTTOM + 16.0,
            esc(label)
        );
        for b in bs {
            let si = names.iter().position(|n| *n == b.series).unwrap_or(0);
            let color = COLORS[si % COLORS.len()];
            let x = gx + bw * si as f64;
            let (y0, y1) = (c.py(0.0), c.py(b.value.max(0.0)));
            let _ = writeln!(
                c.out,
                r#"<rect x="{x:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                bw * 0.9,
                (y0 - y1).max(0.0)
            );
            let _ = writeln!(
                c.out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + bw * 0.45,
                y1 - 4.0,
                fmt_num((b.value * 10.0).round() / 10.0)
            );
            if let Some((lo, hi)) = b.range {
                let cx = x + bw * 0.45;
                let _ = writeln!(
                    c.out,
                    r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#,
                    c.py(lo),
                    c.py(hi)
                );
            }
        }
    }
    let mut legend = 0;
    for (i, r) in refs.iter().enumerate() {
        let color = ref_color(i);
        c.hline(r, color);
        c.legend(legend, &r.label, color, true);
        legend += 1;
    }
    for (i, n) in names.iter().enumerate() {
        c.legend(legend, n, COLORS[i % COLORS.len()], false);
        legend += 1;
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg() {
        let s = cdf(
            "t",
            "ms",
            &[("a".into(), vec![1.0, 2.0, 3.0])],
            &[RefLine::new("thesis", 16.6)],
            false,
        );
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("<path"));
        let l = lines(
            "t",
            "entries",
            "µs",
            &[("ms".into(), vec![(10.0, 5.0), (1e6, 6.0)])],
            &[],
            true,
        );
        assert!(l.contains("1M") && l.contains("<circle"));
        let b = bars(
            "t",
            "Mbit/s",
            &[(
                "TCP".into(),
                vec![Bar {
                    series: "x".into(),
                    value: 3.0,
                    range: Some((2.0, 4.0)),
                }],
            )],
            &[],
        );
        assert!(b.contains("<rect"));
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(100000.0), "100k");
    }
}
