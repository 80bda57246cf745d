//! Text under a picture, drawn with the embedded DejaVu Sans so a preview looks the
//! same on a machine without any font installed.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::{Rgb, RgbImage};

/// Height of one caption line, in pixels.
pub const CAPTION_PX: u32 = 15;

fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(dejavu::sans::regular()).ok()).as_ref()
}

/// Draws `text` with its top-left corner at (`x`, `y`), cut with `…` where it would
/// pass `max_width` pixels; returns the width drawn.
pub fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, max_width: u32, colour: Rgb<u8>) -> u32 {
    let Some(font) = font() else { return 0 };
    let scaled = font.as_scaled(PxScale::from(CAPTION_PX as f32 - 2.0));
    let text = fit(text, max_width, &|t| width(&scaled, t));
    let mut caret = x as f32;
    let baseline = y as f32 + scaled.ascent();
    let mut last = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(prev) = last {
            caret += scaled.kern(prev, id);
        }
        let glyph = id.with_scale_and_position(scaled.scale(), point(caret, baseline));
        caret += scaled.h_advance(id);
        last = Some(id);
        let Some(outline) = font.outline_glyph(glyph) else { continue };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let (px, py) = (bounds.min.x as i64 + i64::from(gx), bounds.min.y as i64 + i64::from(gy));
            if px < 0 || py < 0 || px >= i64::from(img.width()) || py >= i64::from(img.height()) {
                return;
            }
            let p = img.get_pixel_mut(px as u32, py as u32);
            for (ch, fg) in p.0.iter_mut().zip(colour.0) {
                *ch = (f32::from(*ch) * (1.0 - coverage) + f32::from(fg) * coverage).round() as u8;
            }
        });
    }
    (caret - x as f32).max(0.0) as u32
}

fn width<F: Font>(scaled: &impl ScaleFont<F>, text: &str) -> u32 {
    text.chars().map(|c| scaled.h_advance(scaled.glyph_id(c))).sum::<f32>().ceil() as u32
}

/// `text`, or its longest prefix that fits with `…` after it.
fn fit(text: &str, max_width: u32, width: &dyn Fn(&str) -> u32) -> String {
    if width(text) <= max_width {
        return text.to_string();
    }
    let mut cut: String = text.to_string();
    while !cut.is_empty() {
        cut.pop();
        let candidate = format!("{cut}…");
        if width(&candidate) <= max_width {
            return candidate;
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inked(img: &RgbImage) -> usize {
        img.pixels().filter(|p| p.0[0] > 128).count()
    }

    #[test]
    fn text_is_drawn_and_cut_to_its_width() {
        let mut img = RgbImage::new(300, CAPTION_PX);
        let w = draw_text(&mut img, "AMOS22/default/amos_0001/6", 0, 0, 300, Rgb([255, 255, 255]));
        assert!(w > 50 && w <= 300, "{w}");
        assert!(inked(&img) > 100, "glyphs were drawn");
        let mut narrow = RgbImage::new(300, CAPTION_PX);
        let cut = draw_text(&mut narrow, &"long words ".repeat(20), 0, 0, 120, Rgb([255, 255, 255]));
        assert!(cut <= 120, "{cut}");
        assert!(narrow.enumerate_pixels().all(|(x, _, p)| x < 125 || p.0[0] == 0), "nothing drawn past the cut");
    }
}
