//! Samples you can look at: one sample's three orthogonal slices with its mask
//! outlined ([`render`]), and a captioned grid of many ([`grid`]), as `s3-shards
//! preview` and `s3-train predict --preview` draw them.

mod caption;
mod from_store;
mod grid;
mod render;

pub use caption::{CAPTION_PX, draw_text};
pub use from_store::{Selection, caption, preview};
pub use grid::{Tile, grid, pick};
pub use render::{LABEL_RED, PREDICTION_GREEN, ZOOM, render, render_outlined};
