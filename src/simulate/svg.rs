//! The chart: backlog above, cells (asked for and alive) below, over time, for each
//! policy run on spot, in plain SVG.

use std::fmt::Write as _;

use super::world::{Ms, Sample};

const WIDTH: f64 = 900.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;
/// Points per line at most: one per pixel of the plot.
const POINTS: usize = 800;

/// One policy's samples, and the colour of its lines.
pub struct Series<'a> {
    pub name: &'a str,
    pub samples: &'a [Sample],
    pub colour: &'a str,
}

pub fn chart(title: &str, series: &[Series<'_>], ceiling: u32) -> String {
    let end = (series.iter())
        .filter_map(|s| s.samples.last().map(|x| x.t))
        .max()
        .unwrap_or(1)
        .max(1);
    let max_ready = (series
        .iter()
        .flat_map(|s| s.samples.iter().map(|x| x.ready)))
    .max()
    .unwrap_or(0)
    .max(1) as f64;
    let max_cells = f64::from(ceiling.max(1));
    let height = TOP + 2.0 * PANEL + GAP + 40.0 + 18.0 * series.len() as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"20\" font-size=\"15\">{}</text>\n",
        WIDTH + 40.0,
        escape(title)
    );
    let top2 = TOP + PANEL + GAP;
    axes(&mut svg, TOP, "backlog (ready jobs)", max_ready, end);
    axes(&mut svg, top2, "cells", max_cells, end);
    for s in series {
        let ready = |x: &Sample| x.ready as f64;
        line(&mut svg, s, TOP, max_ready, end, ready, "");
        let asked = |x: &Sample| f64::from(x.requested);
        line(&mut svg, s, top2, max_cells, end, asked, "4 3");
        let alive = |x: &Sample| f64::from(x.alive);
        line(&mut svg, s, top2, max_cells, end, alive, "");
    }
    legend(&mut svg, series, top2 + PANEL + 30.0);
    svg.push_str("</svg>\n");
    svg
}

fn axes(svg: &mut String, top: f64, label: &str, max: f64, end: Ms) {
    let (right, bottom) = (LEFT + WIDTH - LEFT, top + PANEL);
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{}\" height=\"{PANEL}\" fill=\"none\" \
         stroke=\"#888\"/>\n<text x=\"{LEFT}\" y=\"{}\">{label}, max {max:.0}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max:.0}</text>\n\
         <text x=\"{}\" y=\"{bottom}\" text-anchor=\"end\">0</text>\n\
         <text x=\"{right}\" y=\"{}\" text-anchor=\"end\">{:.1} h</text>",
        WIDTH - LEFT,
        top - 6.0,
        LEFT - 4.0,
        top + 10.0,
        LEFT - 4.0,
        bottom + 14.0,
        end as f64 / 3_600_000.0
    );
}

fn line(
    svg: &mut String,
    s: &Series<'_>,
    top: f64,
    max: f64,
    end: Ms,
    value: impl Fn(&Sample) -> f64,
    dash: &str,
) {
    let plot_w = WIDTH - LEFT;
    let step = s.samples.len().div_ceil(POINTS).max(1);
    let mut points = String::new();
    for chunk in s.samples.chunks(step) {
        // The chunk's peak, so a short burst stays visible.
        let v = chunk.iter().map(&value).fold(0.0, f64::max);
        let x = LEFT + plot_w * chunk[0].t as f64 / end as f64;
        let y = top + PANEL - PANEL * (v / max).min(1.0);
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.3\" \
         stroke-dasharray=\"{dash}\" points=\"{}\"/>",
        s.colour,
        points.trim_end()
    );
}

fn legend(svg: &mut String, series: &[Series<'_>], y: f64) {
    let x = LEFT;
    for (i, s) in series.iter().enumerate() {
        let y = y + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"/>\
             <text x=\"{}\" y=\"{}\">{} (solid: backlog, cells alive; dashed: cells asked for)</text>",
            x + 24.0,
            s.colour,
            x + 30.0,
            y + 4.0,
            escape(s.name)
        );
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
