//! The PNG chart of a run (`--chart FILE.png`): writes/s on top, lag per ordered pair below,
//! both over the run's time, from the 250 ms samples; a grey vertical line marks where each
//! phase begins.
//!
//! Text goes through plotters' pure-Rust `ab_glyph` rasteriser, which needs a TrueType font
//! file: `MERIDIAN_CHART_FONT` (`none` for no text), or DejaVu Sans / Liberation Sans where Debian, Fedora and Arch
//! put them. Without one the chart is drawn without text (no titles, labels or legend): top
//! panel writes/s in blue, bottom panel one line per pair in the order of the JSON's pairs.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::Sample;

/// Where a sans-serif TTF usually is.
const FONT_PATHS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font once per process; whether text can be drawn.
fn font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var("MERIDIAN_CHART_FONT").ok();
        if env.as_deref() == Some("none") {
            return false;
        }
        let bytes = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS)
            .find_map(|p| std::fs::read(p).ok());
        let Some(bytes) = bytes else { return false };
        // Registered once for the life of the process: plotters keeps a 'static reference.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

/// The colour of series `i`.
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    PALETTE[i % PALETTE.len()]
}

/// Draws the chart of `samples` into `path` (PNG, 1200×800).
pub(crate) fn draw(path: &Path, samples: &[Sample]) -> Result<()> {
    draw_with(path, samples, font())
}

/// Draws the chart, with text or without.
fn draw_with(path: &Path, samples: &[Sample], text: bool) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing the chart {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(400);
    let t_max = samples.last().map_or(1.0, |s| s.t_s).max(1.0);

    let w_max = samples.iter().map(|s| s.writes_per_sec).fold(1.0, f64::max) * 1.1;
    let mut chart =
        panel(&top, text, "writes/s (all regions)", w_max, t_max).map_err(|e| err(&e))?;
    mesh(&mut chart, text, "s", "writes/s").map_err(|e| err(&e))?;
    let starts = phase_starts(samples);
    markers(&mut chart, &starts, w_max, text).map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t_s, s.writes_per_sec)),
            colour(0).stroke_width(2),
        ))
        .map_err(|e| err(&e))?;

    let pairs: Vec<&String> = samples
        .iter()
        .flat_map(|s| s.lag_ms.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let l_max = samples
        .iter()
        .flat_map(|s| s.lag_ms.values().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let title = "replication lag per pair (ms, lag matrix)";
    let mut chart = panel(&bottom, text, title, l_max, t_max).map_err(|e| err(&e))?;
    mesh(&mut chart, text, "s", "ms").map_err(|e| err(&e))?;
    markers(&mut chart, &starts, l_max, false).map_err(|e| err(&e))?;
    for (i, pair) in pairs.iter().enumerate() {
        let points = samples
            .iter()
            .filter_map(|s| Some((s.t_s, *s.lag_ms.get(*pair)?)));
        let series = chart
            .draw_series(LineSeries::new(points, colour(i).stroke_width(2)))
            .map_err(|e| err(&e))?;
        if text {
            let c = colour(i);
            series
                .label(pair.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c));
        }
    }
    if text && !pairs.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

/// A panel from time 0 to `t_max` and 0 to `y_max`, titled when text can be drawn.
fn panel<'b>(
    area: &Area<'b>,
    text: bool,
    title: &str,
    y_max: f64,
    t_max: f64,
) -> Result<Chart<'b>, DrawError> {
    let mut chart = ChartBuilder::on(area);
    chart.margin(10);
    if text {
        chart
            .caption(title, ("sans-serif", 20))
            .x_label_area_size(30)
            .y_label_area_size(70);
    }
    chart.build_cartesian_2d(0.0..t_max, 0.0..y_max)
}

/// When each phase began: (seconds, phase).
fn phase_starts(samples: &[Sample]) -> Vec<(f64, &str)> {
    let mut starts: Vec<(f64, &str)> = Vec::new();
    for s in samples {
        if starts.last().is_none_or(|(_, p)| *p != s.phase) {
            starts.push((s.t_s, &s.phase));
        }
    }
    starts
}

/// A grey vertical line where each phase begins, named when text can be drawn.
fn markers(
    chart: &mut Chart<'_>,
    starts: &[(f64, &str)],
    y_max: f64,
    text: bool,
) -> Result<(), DrawError> {
    let grey = RGBColor(150, 150, 150);
    for (i, (t, phase)) in starts.iter().enumerate() {
        chart.draw_series(LineSeries::new([(*t, 0.0), (*t, y_max)], grey))?;
        if text {
            // Alternate heights so names of short phases do not overlap.
            let y = y_max * if i % 2 == 0 { 0.97 } else { 0.90 };
            let label = Text::new(phase.to_string(), (*t, y), ("sans-serif", 13).into_font());
            chart.draw_series(std::iter::once(label))?;
        }
    }
    Ok(())
}

/// Grid, and axis labels when text can be drawn.
fn mesh(chart: &mut Chart<'_>, text: bool, x: &str, y: &str) -> Result<(), DrawError> {
    let mut m = chart.configure_mesh();
    if text {
        m.x_desc(x).y_desc(y);
    } else {
        m.x_labels(0).y_labels(0);
    }
    m.draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                t_s: i as f64 * 0.25,
                phase: "throughput".into(),
                writes_per_sec: 1000.0 + i as f64,
                lag_ms: [("r0 -> r1".to_owned(), i as f64 / 10.0)].into(),
            })
            .collect();
        draw(&path, &samples).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        draw(&path, &[]).unwrap();
        // Without a font: no text, still a chart.
        draw_with(&path, &samples, false).unwrap();
        assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));
    }
}
