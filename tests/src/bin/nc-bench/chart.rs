//! PNG charts for the report, with plotters (text in DejaVu Sans, from Debian's
//! fonts-dejavu-core, registered with plotters' ab_glyph backend: no system font lookup).

use std::{path::Path, sync::Once};

use plotters::prelude::*;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One line: a label and (x, y) points.
pub struct Series {
    pub label: String,
    /// Index into the palette: the caller keeps it the same for a series across charts/panels.
    pub color: usize,
    pub proto: &'static str,
    pub points: Vec<(f64, f64)>,
}

fn font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes = std::fs::read(FONT)
            .unwrap_or_else(|e| panic!("{FONT} (package fonts-dejavu-core): {e}"));
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .unwrap_or_else(|_| panic!("{FONT} is not a font"));
    });
}

const COLORS: [RGBColor; 3] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

/// The cost ratio to no filter over the number of entries (log scales), one line per series,
/// with the 5% goal marked: everything on the left, and on the right a close-up of the series
/// that stay near no filter (a ratio of 100 would flatten them into one line).
pub fn ratio_over_entries(path: &Path, title: &str, series: &[&Series]) {
    font();
    let root = BitMapBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    let root = root.titled(title, ("sans-serif", 24)).expect("title");
    let (left, right) = root.split_horizontally(600);
    let top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(2.0_f64, f64::max);
    // 1, 2, 5, 10, 20, 50, ... up to the top.
    let decades = (0..6).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)));
    panel(&left, "all", (0.8, top * 1.3), decades.filter(|y| *y <= top * 1.3).collect(), series);
    const CLOSE: f64 = 1.4;
    let close: Vec<&Series> =
        series.iter().copied().filter(|s| s.points.iter().all(|p| p.1 <= CLOSE)).collect();
    let low = close.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.9_f64, f64::min);
    let tenths = (5..=14).map(|t| f64::from(t) / 10.0).filter(|y| *y >= low - 0.1).collect();
    panel(&right, "close-up", (low.min(0.9) * 0.98, CLOSE), tenths, &close);
    root.present().unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    (y0, y1): (f64, f64),
    y_keys: Vec<f64>,
    series: &[&Series],
) {
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::MAX, f64::min).clamp(1.0, 10.0),
        xs.iter().copied().fold(f64::MIN, f64::max).max(10.0),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (x0 / 1.5..x1 * 1.5).log_scale(),
            (y0..y1).log_scale().with_key_points(y_keys),
        )
        .expect("chart");
    chart
        .configure_mesh()
        .x_desc("allow entries (rules, set elements)")
        .y_desc("time per attempt / no filter")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style(("sans-serif", 15))
        .draw()
        .expect("mesh");
    let goal = [(x0 / 1.5, 1.05), (x1 * 1.5, 1.05)];
    chart
        .draw_series(DashedLineSeries::new(goal, 6, 4, BLACK.mix(0.6).stroke_width(1)))
        .expect("goal")
        .label("1.05: the 5% goal")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.6)));
    for s in series {
        let color = COLORS[s.color % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .expect("line")
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .expect("points");
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .expect("legend");
}

/// Grouped bars: for each group, one bar per (label, value).
pub fn bars(path: &Path, title: &str, y_desc: &str, groups: &[(String, Vec<(String, f64)>)]) {
    font();
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    let n = groups.iter().map(|g| g.1.len()).max().unwrap_or(1);
    let ymax = groups.iter().flat_map(|g| g.1.iter().map(|b| b.1)).fold(1.0_f64, f64::max) * 1.15;
    let slots = groups.len() * (n + 1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..slots as f64, 0.0..ymax)
        .expect("chart");
    let names: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        // Ticks every half slot, so that each group's center (a whole or half slot) has
        // one; only the centers are labelled, with the group's name.
        .x_labels(2 * slots + 1)
        .x_label_formatter(&|x| {
            let g = (*x / (n + 1) as f64).floor() as usize;
            let center = (g * (n + 1)) as f64 + n as f64 / 2.0;
            if (x - center).abs() < 0.01 {
                names.get(g).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 15))
        .draw()
        .expect("mesh");
    for (gi, (_, bars)) in groups.iter().enumerate() {
        for (bi, (label, v)) in bars.iter().enumerate() {
            let x = (gi * (n + 1) + bi) as f64;
            let color = COLORS[bi % COLORS.len()];
            let drawn = chart
                .draw_series([Rectangle::new([(x + 0.1, 0.0), (x + 0.9, *v)], color.filled())])
                .expect("bar");
            if gi == 0 {
                drawn.label(label).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            }
        }
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .expect("legend");
    root.present().unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
