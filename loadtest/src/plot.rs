//! `--plot FILE.svg`: a run drawn for a person — the phase's latency second
//! by second (p50 and p99), sessions completed and failed per second, and the
//! distribution of the phase's latency over the whole run.
//!
//! Owns the picture only; the numbers come from the [`Recorder`] and are the
//! same as the report's. Must never: write anything but the file it was
//! given. SVG only: PNG would need a font rasterizer and the system font
//! libraries behind it, which this tool does not depend on (text in the SVG
//! is laid out by the viewer).
//!
//! [`Recorder`]: crate::report::Recorder

use std::path::Path;

use anyhow::bail;
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::SecondStats;

/// Bars in the distribution panel.
const BINS: u64 = 60;

/// Refuses a file name the plot cannot be written as (checked before a run,
/// so a long run is not lost to a typo).
pub fn check_path(path: &Path) -> anyhow::Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        bail!(
            "--plot writes SVG only; name the file with .svg (got {})",
            path.display()
        );
    }
    Ok(())
}

/// Draws `timeline` and `whole_run` (both of phase `phase`) into `path`.
pub fn write_svg(
    path: &Path,
    title: &str,
    phase: &str,
    timeline: &[SecondStats],
    whole_run: Option<&Histogram<u64>>,
) -> anyhow::Result<()> {
    check_path(path)?;
    let root = SVGBackend::new(path, (1000, 960)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let seconds = (timeline.len() as u64).max(1);

    let line = |pick: fn(&SecondStats) -> Option<f64>| {
        timeline
            .iter()
            .filter_map(move |s| pick(s).map(|v| (s.second, v)))
            .collect::<Vec<_>>()
    };
    time_panel(
        &panels[0],
        &format!("{title}: {phase} latency, second by second"),
        "ms",
        seconds,
        [
            ("p50", BLUE, line(|s| s.p50_us.map(ms))),
            ("p99", RED, line(|s| s.p99_us.map(ms))),
        ],
    )?;
    time_panel(
        &panels[1],
        "sessions per second",
        "sessions",
        seconds,
        [
            ("completed", GREEN, line(|s| Some(s.completed as f64))),
            ("failed", RED, line(|s| Some(s.failed as f64))),
        ],
    )?;

    // Distribution over the whole run, up to its 99.9th percentile.
    let bins = whole_run.map(distribution).unwrap_or_default();
    let width_ms = bins.first().map_or(1.0, |b| b.1 - b.0);
    let right = bins.last().map_or(1.0, |b| b.1);
    let tallest = bins.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&panels[2])
        .caption(
            format!(
                "{phase} latency over the whole run ({} samples; bars {width_ms:.2} ms wide, up to p99.9)",
                whole_run.map_or(0, |h| h.len())
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..right, 0f64..tallest)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("samples")
        .draw()?;
    chart.draw_series(
        bins.iter()
            .map(|&(lo, hi, n)| Rectangle::new([(lo, 0.0), (hi, n as f64)], BLUE.filled())),
    )?;
    root.present()?;
    Ok(())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A named, coloured line of (second, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(u64, f64)>);

/// A panel with seconds across and two named lines.
fn time_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    seconds: u64,
    lines: [Line<'_>; 2],
) -> anyhow::Result<()> {
    let top = lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0u64..seconds, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc(y_desc)
        .draw()?;
    for (name, color, points) in lines {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Equal-width bins (ms from, ms to, samples) from 0 to the 99.9th
/// percentile; slower samples are left out so one stall does not flatten
/// the picture (the report's `max` still shows it).
fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let top_us = h.value_at_quantile(0.999).max(1);
    let width_us = top_us.div_ceil(BINS).max(1);
    let mut counts = vec![0u64; BINS as usize];
    for v in h.iter_recorded() {
        let us = v.value_iterated_to();
        if us <= top_us {
            let i = ((us / width_us) as usize).min(counts.len() - 1);
            counts[i] += v.count_at_value();
        }
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let lo = (i as u64 * width_us) as f64 / 1000.0;
            (lo, lo + width_us as f64 / 1000.0, n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::report::Recorder;

    #[test]
    fn draws_latency_throughput_and_distribution_into_an_svg() {
        let r = Recorder::default();
        for ms in 1..200u64 {
            r.record("session", Duration::from_micros(ms * 97));
            r.ok();
        }
        r.fail("unavailable");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("run.svg");
        super::write_svg(
            &path,
            "recover",
            "session",
            &r.timeline("session"),
            r.histogram("session").as_ref(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let svg = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in [
            "second by second",
            "sessions per second",
            "p99",
            "199 samples",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        assert!(svg.contains("<rect"), "no distribution bars");
    }

    #[test]
    fn other_formats_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("run.png");
        let err = super::write_svg(&path, "recover", "session", &[], None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("SVG only"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn an_empty_run_still_draws() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("empty.svg");
        super::write_svg(&path, "idle", "session", &[], None).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(path.exists());
    }
}
