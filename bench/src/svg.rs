//! Charts as SVG, drawn with plotters (its SVG backend only): CDFs, line
//! charts and grouped bar charts, with dashed reference lines for the
//! thesis's figures and the targets, and the legend beside the plot.

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;

const W: u32 = 980;
const H: u32 = 440;
const LEGEND_W: u32 = 340;
const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];
const REF_COLORS: [RGBColor; 4] = [
    RGBColor(0x55, 0x55, 0x55),
    RGBColor(0xaa, 0x88, 0x00),
    RGBColor(0x00, 0x88, 0x88),
    RGBColor(0xaa, 0x00, 0xaa),
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

/// One bar: its value and the (min, max) of repetitions, if any.
#[derive(Debug, Clone)]
pub struct Bar {
    pub series: String,
    pub value: f64,
    pub range: Option<(f64, f64)>,
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

/// One axis. A logarithmic one spans whole decades and is plotted in log10
/// space, with a tick at each decade.
#[derive(Debug, Clone, Copy)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(lo: f64, hi: f64, log: bool) -> Axis {
        if log {
            let lo = lo.max(1e-9);
            let hi = hi.max(lo * 10.0);
            Axis {
                lo: lo.log10().floor(),
                hi: hi.log10().ceil(),
                log,
            }
        } else if hi.partial_cmp(&lo) == Some(std::cmp::Ordering::Greater) {
            Axis { lo, hi, log }
        } else {
            Axis {
                lo,
                hi: lo + 1.0,
                log,
            }
        }
    }

    /// Where `v` is plotted, kept inside the axis.
    fn at(&self, v: f64) -> f64 {
        let p = if self.log { v.max(1e-300).log10() } else { v };
        p.clamp(self.lo, self.hi)
    }

    fn contains(&self, v: f64) -> bool {
        let p = if self.log { v.log10() } else { v };
        (self.lo..=self.hi).contains(&p)
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }

    fn label(&self, p: &f64) -> String {
        if self.log {
            fmt_num(10f64.powf(p.round()))
        } else {
            fmt_num(*p)
        }
    }

    fn ticks(&self) -> usize {
        if self.log {
            (self.hi - self.lo).round() as usize + 1
        } else {
            6
        }
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn<T> = Result<T, DrawingAreaErrorKind<std::io::Error>>;
/// A legend entry: label, colour, dashed.
type Entry = (String, RGBColor, bool);

/// Draws a chart titled `title` with `plot` (which returns its legend) and
/// returns the SVG text. A drawing error gives an SVG that says so.
fn render(title: &str, plot: impl FnOnce(&Area) -> Drawn<Vec<Entry>>) -> String {
    let mut out = String::new();
    let drawn = (|| {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, (FONT, 16).into_font().style(FontStyle::Bold))?;
        let (chart, legend) = root.split_horizontally(W - LEGEND_W);
        let entries = plot(&chart)?;
        for (i, (label, color, dashed)) in entries.iter().enumerate() {
            let y = 24 + 20 * i as i32;
            let segments: &[(i32, i32)] = if *dashed {
                &[(14, 20), (24, 30), (34, 38)]
            } else {
                &[(14, 38)]
            };
            for &(x0, x1) in segments {
                legend.draw(&PathElement::new(
                    vec![(x0, y), (x1, y)],
                    color.stroke_width(3),
                ))?;
            }
            legend.draw(&Text::new(
                label.as_str(),
                (44, y - 7),
                (FONT, 13).into_font(),
            ))?;
        }
        root.present()
    })();
    match drawn {
        Ok(()) => out,
        Err(e) => format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\">\
             <text x=\"20\" y=\"40\">chart failed: {}</text></svg>\n",
            e.to_string().replace('<', "&lt;")
        ),
    }
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart on `area` with axes `x` and `y`, a light grid and labels. With
/// `categories`, the x ticks are on the integers, named by it, and there are
/// no vertical grid lines.
fn chart<'a, 'b>(
    area: &'a Area<'b>,
    (x, y): (Axis, Axis),
    (x_label, y_label): (&str, &str),
    categories: Option<&dyn Fn(&f64) -> String>,
) -> Drawn<Chart<'a, 'b>> {
    let mut c = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x.range(), y.range())?;
    let (fx, fy) = (move |p: &f64| x.label(p), move |p: &f64| y.label(p));
    let mut mesh = c.configure_mesh();
    match categories {
        Some(names) => mesh
            .disable_x_mesh()
            .x_labels(x.hi.ceil() as usize + 1)
            .x_label_formatter(names),
        None => mesh.x_labels(x.ticks()).x_label_formatter(&fx),
    };
    mesh.y_labels(y.ticks())
        .y_label_formatter(&fy)
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xe5, 0xe5, 0xe5))
        .draw()?;
    Ok(c)
}

/// Horizontal dashed reference lines across the chart; their legend
/// entries.
fn hlines(c: &mut Chart, refs: &[RefLine], (x, y): (Axis, Axis)) -> Drawn<Vec<Entry>> {
    let mut legend = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let color = REF_COLORS[i % REF_COLORS.len()];
        if y.contains(r.value) {
            c.draw_series(dashed(vec![(x.lo, r.value), (x.hi, r.value)], color))?;
        }
        legend.push((r.label.clone(), color, true));
    }
    Ok(legend)
}

fn dashed(
    points: Vec<(f64, f64)>,
    color: RGBColor,
) -> DashedLineSeries<std::vec::IntoIter<(f64, f64)>, i32> {
    DashedLineSeries::new(points, 6, 4, color.stroke_width(2))
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
    let y = Axis::new(0.0, 1.0, false);
    render(title, |area| {
        let mut c = chart(area, (x, y), (x_label, "fraction of samples ≤ x"), None)?;
        let mut legend = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let color = REF_COLORS[i % REF_COLORS.len()];
            if x.contains(r.value) {
                let at = x.at(r.value);
                c.draw_series(dashed(vec![(at, 0.0), (at, 1.0)], color))?;
            }
            legend.push((r.label.clone(), color, true));
        }
        for (i, (name, samples)) in series.iter().enumerate() {
            let s = crate::stats::sorted(samples);
            let Some(first) = s.first() else { continue };
            let color = COLORS[i % COLORS.len()];
            let n = s.len() as f64;
            let mut steps = vec![(x.at(*first), 0.0)];
            for (k, v) in s.iter().enumerate() {
                steps.push((x.at(*v), k as f64 / n));
                steps.push((x.at(*v), (k + 1) as f64 / n));
            }
            c.draw_series(LineSeries::new(steps, color.stroke_width(2)))?;
            legend.push((format!("{name} (n={})", s.len()), color, false));
        }
        Ok(legend)
    })
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
    let finite = |sel: fn(&(f64, f64)) -> f64| {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(sel))
            .filter(|v| v.is_finite())
            .collect::<Vec<f64>>()
    };
    let (xs, ys) = (finite(|p| p.0), finite(|p| p.1));
    let (xlo, xhi) = match (
        xs.iter().copied().reduce(f64::min),
        xs.iter().copied().reduce(f64::max),
    ) {
        (Some(a), Some(b)) => (a, b),
        _ => (1.0, 10.0),
    };
    let yhi = ys
        .iter()
        .copied()
        .chain(refs.iter().map(|r| r.value))
        .reduce(f64::max)
        .map_or(1.0, |v| v * 1.05);
    let (x, y) = (Axis::new(xlo, xhi, log_x), Axis::new(0.0, yhi, false));
    render(title, |area| {
        let mut c = chart(area, (x, y), (x_label, y_label), None)?;
        let mut legend = hlines(&mut c, refs, (x, y))?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = points.iter().map(|&(px, py)| (x.at(px), py)).collect();
            c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
            c.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            legend.push((name.clone(), color, false));
        }
        Ok(legend)
    })
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
    let mut names: Vec<&str> = Vec::new();
    for b in groups.iter().flat_map(|(_, bs)| bs) {
        if !names.contains(&b.series.as_str()) {
            names.push(&b.series);
        }
    }
    // Group g is centred on x = g; ticks fall on the integers.
    let n = groups.len().max(1);
    let x = Axis::new(-0.5, n as f64 - 0.5, false);
    let y = Axis::new(0.0, if yhi > 0.0 { yhi * 1.1 } else { 1.0 }, false);
    render(title, |area| {
        let group = |p: &f64| {
            let g = p.round();
            match groups.get(g as usize) {
                Some((label, _)) if (p - g).abs() < 1e-6 && g >= 0.0 => label.clone(),
                _ => String::new(),
            }
        };
        let mut c = chart(area, (x, y), ("", y_label), Some(&group))?;
        let bw = 0.8 / names.len().max(1) as f64;
        for (g, (_, bs)) in groups.iter().enumerate() {
            for b in bs {
                let si = names.iter().position(|s| *s == b.series).unwrap_or(0);
                let color = COLORS[si % COLORS.len()];
                let x0 = g as f64 - 0.4 + bw * si as f64;
                let (mid, top) = (x0 + bw * 0.5, b.value.max(0.0));
                c.draw_series([Rectangle::new(
                    [(x0 + bw * 0.05, 0.0), (x0 + bw * 0.95, top)],
                    color.filled(),
                )])?;
                c.draw_series([Text::new(
                    fmt_num((b.value * 10.0).round() / 10.0),
                    (mid, top),
                    (FONT, 10)
                        .into_font()
                        .into_text_style(area)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )])?;
                if let Some((lo, hi)) = b.range {
                    c.draw_series([PathElement::new(vec![(mid, lo), (mid, hi)], BLACK)])?;
                }
            }
        }
        let mut legend = hlines(&mut c, refs, (x, y))?;
        for (i, name) in names.iter().enumerate() {
            legend.push((name.to_string(), COLORS[i % COLORS.len()], false));
        }
        Ok(legend)
    })
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
        assert!(
            s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
            "{s}"
        );
        assert!(s.contains("<polyline") && s.contains("thesis") && s.contains("a (n=3)"));
        let l = lines(
            "t",
            "entries",
            "µs",
            &[("ms".into(), vec![(10.0, 5.0), (1e6, 6.0)])],
            &[],
            true,
        );
        assert!(l.contains("1M") && l.contains("<circle"), "{l}");
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
        assert!(b.contains("<rect") && b.contains("TCP"), "{b}");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(100000.0), "100k");
    }
}
