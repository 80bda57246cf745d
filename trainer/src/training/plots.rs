//! PNG plots of a run's `metrics.csv`: loss, Dice, learning rate and throughput
//! against the optimiser step, each raw (faint) and smoothed.

use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Result, TrainError};

/// Pixels of the whole figure.
const SIZE: (u32, u32) = (1200, 800);

/// The metrics columns, parsed from `metrics.csv` (`step,epoch,loss,dice,lr,samples_per_s`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Curves {
    /// Optimiser steps.
    pub step: Vec<f64>,
    /// Loss per sample.
    pub loss: Vec<f64>,
    /// Dice of the last pass.
    pub dice: Vec<f64>,
    /// Encoder learning rate.
    pub lr: Vec<f64>,
    /// Samples per second.
    pub samples_per_s: Vec<f64>,
}

impl Curves {
    /// Parses a metrics CSV; rows that do not parse are skipped (a CSV cut short by a
    /// crash still plots).
    pub fn parse(csv: &str) -> Curves {
        let mut c = Curves::default();
        for line in csv.lines().skip(1) {
            let v: Vec<f64> = line.split(',').map_while(|x| x.trim().parse().ok()).collect();
            if v.len() == 6 && line.split(',').count() == 6 {
                c.step.push(v[0]);
                c.loss.push(v[2]);
                c.dice.push(v[3]);
                c.lr.push(v[4]);
                c.samples_per_s.push(v[5]);
            }
        }
        c
    }

    /// Appends a point; past `cap` points, neighbours are averaged in pairs, so a
    /// run of any length plots from at most `cap` points. Points pushed after a
    /// merge are not merged until the next one, so the resolution is uneven by at
    /// most a factor of two.
    pub fn push_bounded(&mut self, step: f64, loss: f64, dice: f64, lr: f64, samples_per_s: f64, cap: usize) {
        self.step.push(step);
        self.loss.push(loss);
        self.dice.push(dice);
        self.lr.push(lr);
        self.samples_per_s.push(samples_per_s);
        if self.step.len() > cap.max(2) {
            for v in [&mut self.step, &mut self.loss, &mut self.dice, &mut self.lr, &mut self.samples_per_s] {
                *v = v.chunks(2).map(mean_finite).collect();
            }
        }
    }
}

/// Mean of the finite values (NaN when none: a step whose samples were all skipped).
fn mean_finite(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() { f64::NAN } else { f.iter().sum::<f64>() / f.len() as f64 }
}

/// Exponential moving average, the usual training-curve smoothing.
fn smooth(v: &[f64]) -> Vec<f64> {
    let alpha = (2.0 / (v.len() as f64 / 10.0 + 1.0)).clamp(0.02, 1.0);
    let mut out = Vec::with_capacity(v.len());
    let mut acc = None;
    for &x in v {
        // A NaN (a step whose samples were all skipped) must not poison the curve.
        if x.is_finite() {
            acc = Some(acc.map_or(x, |a: f64| a + alpha * (x - a)));
        }
        out.push(acc.unwrap_or(f64::NAN));
    }
    out
}

/// Plotters draws text through ab_glyph, which needs a registered font: the embedded
/// DejaVu Sans, so plots render the same on machines without any font installed.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Renders the four curves as one PNG.
pub fn render_png(curves: &Curves, title: &str) -> Result<Vec<u8>> {
    register_font();
    let err = TrainError::Plot;
    let (w, h) = SIZE;
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(|e| err(e.to_string()))?;
        let panels = root.split_evenly((2, 2));
        let series: [(&str, &[f64], RGBColor); 4] = [
            ("loss per sample", &curves.loss, RGBColor(200, 50, 40)),
            ("Dice (last pass)", &curves.dice, RGBColor(30, 110, 190)),
            ("learning rate", &curves.lr, RGBColor(90, 140, 60)),
            ("samples / s", &curves.samples_per_s, RGBColor(120, 80, 160)),
        ];
        let x_max = curves.step.last().copied().unwrap_or(1.0).max(1.0);
        for (area, (name, values, colour)) in panels.iter().zip(series) {
            let finite = values.iter().copied().filter(|v| v.is_finite());
            let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
            let (lo, hi) = if lo.is_finite() { (lo.min(0.0), hi.max(lo + 1e-12) * 1.05) } else { (0.0, 1.0) };
            let mut chart = ChartBuilder::on(area)
                .caption(name, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..x_max, lo..hi)
                .map_err(|e| err(e.to_string()))?;
            chart.configure_mesh().x_desc("step").draw().map_err(|e| err(e.to_string()))?;
            let raw = curves.step.iter().copied().zip(values.iter().copied()).filter(|(_, y)| y.is_finite());
            chart.draw_series(LineSeries::new(raw, colour.mix(0.25))).map_err(|e| err(e.to_string()))?;
            let smoothed = curves.step.iter().copied().zip(smooth(values)).filter(|(_, y)| y.is_finite());
            chart.draw_series(LineSeries::new(smoothed, colour.stroke_width(2))).map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| err("buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| err(e.to_string()))?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_to_a_png_with_the_curves_drawn() {
        let mut csv = String::from("step,epoch,loss,dice,lr,samples_per_s\n");
        for s in 1..=50 {
            let f = s as f64;
            csv.push_str(&format!("{s},0,{:.4},{:.4},1e-3,{:.2}\n", 5.0 / f, 1.0 - 1.0 / f, 2.0 + f / 100.0));
        }
        csv.push_str("51,0,garbage\n52,0,1.0,0.5,1e-3,2.0,extra\n53,0,NaN,NaN,1e-3,0.0\n");
        let curves = Curves::parse(&csv);
        assert_eq!(curves.step.len(), 51, "bad and 7-column rows skipped, the NaN step kept");
        assert!(smooth(&curves.loss).last().is_some_and(|v| v.is_finite()), "a NaN does not poison the curve");
        let png = render_png(&curves, "test run").expect("png");
        let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect("decodes").to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        // Each panel's smoothed curve is drawn in its own colour.
        for colour in [[200, 50, 40], [30, 110, 190], [90, 140, 60], [120, 80, 160]] {
            let n = img.pixels().filter(|p| p.0 == colour).count();
            assert!(n > 100, "colour {colour:?} drawn on {n} pixels");
        }
        // Text was rendered (the title and labels are dark grey-to-black anti-aliased glyphs).
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
        assert!(dark > 500, "{dark} dark pixels: no text?");
    }
}
