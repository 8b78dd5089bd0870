//! The intake chart, drawn by the server as SVG: requests per second over the last ten
//! minutes, stacked by status class, in 10-second columns (the average per second of each).

use maud::{Markup, html};

use crate::metrics::INTAKE_CLASSES;

/// Seconds per column.
const COLUMN_SECONDS: usize = 10;
const WIDTH: usize = 600;
const HEIGHT: f64 = 120.0;

/// The chart of `window` (per second, oldest first, as `IntakeRing::window` gives it).
pub fn intake(window: &[[u32; INTAKE_CLASSES.len()]]) -> Markup {
    let columns: Vec<[f64; INTAKE_CLASSES.len()]> = window
        .chunks(COLUMN_SECONDS)
        .map(|chunk| {
            let mut sum = [0.0; INTAKE_CLASSES.len()];
            for second in chunk {
                for (s, c) in sum.iter_mut().zip(second) {
                    *s += f64::from(*c);
                }
            }
            sum.map(|s| s / chunk.len() as f64)
        })
        .collect();
    let peak = columns.iter().map(|c| c.iter().sum::<f64>()).fold(0.0, f64::max);
    let scale = if peak > 0.0 { HEIGHT / peak } else { 0.0 };
    let width = WIDTH as f64 / columns.len().max(1) as f64;
    let mut rects = Vec::new();
    for (i, column) in columns.iter().enumerate() {
        let mut y = HEIGHT;
        for (class, value) in column.iter().enumerate().filter(|(_, v)| **v > 0.0) {
            let h = value * scale;
            y -= h;
            rects.push((INTAKE_CLASSES[class], i as f64 * width, y, h));
        }
    }
    let totals: Vec<u64> = (0..INTAKE_CLASSES.len())
        .map(|class| window.iter().map(|s| u64::from(s[class])).sum())
        .collect();
    html! {
        svg id="intake-chart" xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox=(format!("0 0 {WIDTH} {}", HEIGHT + 16.0)) width=(WIDTH) height=(HEIGHT + 16.0) {
            title { "Requests per second, last 10 minutes, by status" }
            line.axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
            @for (class, x, y, h) in &rects {
                rect class=(format!("c-{class}")) x=(format!("{x:.1}")) y=(format!("{y:.1}"))
                    width=(format!("{:.1}", width - 1.0)) height=(format!("{h:.1}")) {}
            }
            text x="2" y="12" { (format!("peak {peak:.1}/s")) }
            text x="2" y=(HEIGHT + 14.0) { "-10 min" }
            text x=(WIDTH - 30) y=(HEIGHT + 14.0) { "now" }
        }
        p.legend {
            @for (class, name) in INTAKE_CLASSES.iter().enumerate() {
                span class=(format!("key c-{name}")) { (name) ": " span.total { (totals[class]) } }
                " "
            }
            "(last 10 minutes)"
        }
    }
}
