//! The weekly chart (plotters, SVG): bars of terminations received and
//! successful per week on the left axis, the SLA median and p95 hours and the 24 h
//! SLA line on the right axis. SVG only: plotters' bitmap backend needs font files
//! from the system to draw text, SVG leaves text to the viewer.

use std::path::Path;

use plotters::prelude::*;

use super::{ReportError, WeeklyReport};
use crate::audit::SLA_HOURS;

/// Draws the chart of `report` as an SVG document.
///
/// Errors: [`ReportError::Chart`] (reported against `name`) when plotters fails.
pub fn chart_svg(report: &WeeklyReport, name: &Path) -> Result<String, ReportError> {
    let mut svg = String::new();
    draw(report, &mut svg).map_err(|detail| ReportError::Chart {
        path: name.to_path_buf(),
        detail,
    })?;
    Ok(svg)
}

/// Writes the chart of `report` to `path`, which must end in `.svg`.
///
/// Errors: [`ReportError::ChartFormat`] for any other extension (PNG included);
/// [`ReportError::Chart`] when drawing or writing fails.
pub fn write_chart(report: &WeeklyReport, path: &Path) -> Result<(), ReportError> {
    let is_svg = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !is_svg {
        return Err(ReportError::ChartFormat {
            path: path.to_path_buf(),
        });
    }
    let svg = chart_svg(report, path)?;
    std::fs::write(path, svg).map_err(|e| ReportError::Chart {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

#[allow(clippy::cast_precision_loss)]
fn draw(report: &WeeklyReport, out: &mut String) -> Result<(), String> {
    let weeks = &report.weeks;
    let n = u32::try_from(weeks.len()).unwrap_or(u32::MAX).max(1);
    let max_count = weeks.iter().map(|w| w.total).max().unwrap_or(0).max(1);
    let max_hours = weeks
        .iter()
        .filter_map(|w| w.sla_p95_hours)
        .fold(SLA_HOURS, f64::max)
        * 1.15;
    let label = |i: u32| {
        usize::try_from(i)
            .ok()
            .and_then(|i| weeks.get(i))
            .map(|w| w.week.clone())
            .unwrap_or_default()
    };
    {
        let root = SVGBackend::with_string(out, (960, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Terminations per ISO week ({})", report.tz.name()),
                ("sans-serif", 22),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .right_y_label_area_size(56)
            .build_cartesian_2d(
                (0u32..n).into_segmented(),
                0u64..(max_count + max_count / 5 + 1),
            )
            .map_err(|e| e.to_string())?
            .set_secondary_coord((0u32..n).into_segmented(), 0f64..max_hours);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(weeks.len().max(1))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => label(*i),
                _ => String::new(),
            })
            .y_desc("terminations")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .configure_secondary_axes()
            .y_desc("hours from effective time to confirmed deactivation")
            .draw()
            .map_err(|e| e.to_string())?;
        let bars = |value: fn(&super::WeekRow) -> u64, style: ShapeStyle, inset: f64| {
            weeks.iter().zip(0u32..).map(move |(w, i)| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0),
                        (SegmentValue::Exact(i + 1), value(w)),
                    ],
                    style,
                );
                bar.set_margin(0, 0, (inset * 60.0) as u32, (inset * 60.0) as u32);
                bar
            })
        };
        chart
            .draw_series(bars(|w| w.total, BLUE.mix(0.25).filled(), 0.1))
            .map_err(|e| e.to_string())?
            .label("received")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], BLUE.mix(0.25).filled())
            });
        chart
            .draw_series(bars(|w| w.successful, GREEN.mix(0.6).filled(), 0.25))
            .map_err(|e| e.to_string())?
            .label("deactivated or already inactive")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], GREEN.mix(0.6).filled())
            });
        chart
            .draw_series(bars(|w| w.failed, RED.mix(0.6).filled(), 0.4))
            .map_err(|e| e.to_string())?
            .label("failed / dead-lettered")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], RED.mix(0.6).filled()));
        let line = |value: fn(&super::WeekRow) -> Option<f64>| {
            weeks
                .iter()
                .zip(0u32..)
                .filter_map(move |(w, i)| value(w).map(|h| (SegmentValue::CenterOf(i), h)))
                .collect::<Vec<_>>()
        };
        chart
            .draw_secondary_series(LineSeries::new(
                line(|w| w.sla_p95_hours),
                MAGENTA.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label("SLA p95 hours")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], MAGENTA.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(
                line(|w| w.sla_median_hours),
                CYAN.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label("SLA median hours")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], CYAN.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(
                [
                    (SegmentValue::Exact(0), SLA_HOURS),
                    (SegmentValue::Exact(n), SLA_HOURS),
                ],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label("24 h SLA")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK.stroke_width(1)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(())
}
