//! SAM-Med3D (`vit_b_ori` and smaller configurations), field names matching the
//! reference state dict so weights load by name.

pub mod image_encoder;
pub mod layers;
pub mod mask_decoder;
pub mod prompt_encoder;

use burn::prelude::*;

use crate::config::SamConfig;
pub use image_encoder::ImageEncoder;
pub use mask_decoder::{DecoderOutput, MaskDecoder};
pub use prompt_encoder::PromptEncoder;

/// The whole model.
#[derive(Module, Debug)]
pub struct Sam {
    /// ViT image encoder.
    pub image_encoder: ImageEncoder,
    /// Point and mask prompts.
    pub prompt_encoder: PromptEncoder,
    /// Mask decoder.
    pub mask_decoder: MaskDecoder,
}

/// `s3-train info`: the configuration and the parameter count of each part.
pub fn describe(name: &str, cfg: &SamConfig, m: &Sam) -> String {
    use burn::module::Module;
    let enc = &m.image_encoder;
    let rows = [
        ("image_encoder", enc.num_params()),
        (
            "  patch_embed + pos_embed",
            enc.patch_embed.num_params() + enc.pos_embed.val().dims().iter().product::<usize>(),
        ),
        ("  blocks", enc.blocks.iter().map(|b| b.num_params()).sum()),
        ("  neck", enc.neck.num_params()),
        ("prompt_encoder (trainable)", m.prompt_encoder.num_params() - m.prompt_encoder.pe_layer.num_params()),
        ("mask_decoder", m.mask_decoder.num_params()),
        ("  transformer", m.mask_decoder.transformer.num_params()),
    ];
    let mut out = format!(
        "{name}: img {}³, embed {}, depth {}, heads {}, global {:?}, window {}, out {}\n",
        cfg.img_size, cfg.embed_dim, cfg.depth, cfg.heads, cfg.global_attn, cfg.window, cfg.out
    );
    for (k, v) in rows {
        out.push_str(&format!("{k:<30} {v:>13}\n"));
    }
    out.push_str(&format!("{:<30} {:>13}\n", "total trainable", m.trainable_params()));
    out.push_str(&format!("{:<30} {:>13}\n", "buffers (PE Gaussian)", m.prompt_encoder.pe_layer.num_params()));
    out
}

/// Prompts for one decoder pass.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Point coordinates `[B, N, 3]` in voxels of the input cube and labels `[B, N]`
    /// (1 positive, 0 negative); None for a pass without points (no sparse tokens).
    pub points: Option<(Tensor<3>, Tensor<2>)>,
    /// Previous low-resolution logits `[B, 1, 4g, 4g, 4g]`.
    pub mask: Option<Tensor<5>>,
}

impl Sam {
    /// A freshly initialised model of `cfg`.
    pub fn new(cfg: &SamConfig, device: &Device) -> Sam {
        Sam {
            image_encoder: ImageEncoder::new(cfg, device),
            prompt_encoder: PromptEncoder::new(cfg, device),
            mask_decoder: MaskDecoder::new(cfg, device),
        }
    }

    /// Trainable parameters (the prompt encoder's Gaussian matrix is a buffer).
    pub fn trainable_params(&self) -> usize {
        let g = self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.val().dims();
        self.num_params() - g[0] * g[1]
    }

    /// One decoder pass on precomputed image embeddings `[B, E, g, g, g]`.
    /// Returns all masks (index 0 single-mask, 1.. multimask) at low resolution.
    pub fn decode(&self, image_embeddings: Tensor<5>, prompt: Prompt) -> DecoderOutput {
        let device = image_embeddings.device();
        let [b, _, _, _, _] = image_embeddings.dims();
        let sparse = prompt.points.map(|(c, l)| self.prompt_encoder.embed_points(c, l));
        let dense = self.prompt_encoder.embed_mask(prompt.mask, b, &device);
        let pe = self.prompt_encoder.dense_pe(&device);
        self.mask_decoder.forward(image_embeddings, pe, sparse, dense)
    }
}

impl DecoderOutput {
    /// The single-mask output: logits `[B, 1, L, L, L]`, IoU `[B, 1]`.
    pub fn single(&self) -> (Tensor<5>, Tensor<2>) {
        (self.masks.clone().slice(s![.., 0..1]), self.iou.clone().slice(s![.., 0..1]))
    }
    /// The multimask outputs: logits `[B, M, L, L, L]`, IoU `[B, M]`.
    pub fn multi(&self) -> (Tensor<5>, Tensor<2>) {
        let m = self.masks.dims()[1];
        (self.masks.clone().slice(s![.., 1..m]), self.iou.clone().slice(s![.., 1..m]))
    }
}
