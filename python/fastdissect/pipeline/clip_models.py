"""Adapters that give CLIP models the two methods `fd.clip_dissect` calls: `encode_images(images)`
((H, W, 3) uint8 arrays -> (N, d)) and `encode_texts(words)` (-> (C, d)), plus `fingerprint()` (a hash
of the weights) so that image embeddings can be cached.

- `TransformersCLIP(model, tokenizer)`: a transformers `CLIPModel` and its tokenizer (or any callable
  words -> {"input_ids", "attention_mask"} tensors); `TransformersCLIP.load(path_or_name)` reads a
  local directory or the hub cache and never downloads unless `allow_download=True`.
- `OpenCLIP(model, tokenizer)`: an open_clip model (`encode_image`, `encode_text`) and its tokenizer.
Images are prepared as CLIP's own preprocessing does: the shorter side resized to the model's input
size (bicubic), a centre crop, CLIP's normalisation.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import validate
from ..files.identity import state_hash

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(images, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """(N, 3, size, size) CLIP input: shorter side to `size` (bicubic), centre crop, normalised."""
    from PIL import Image

    out = []
    for im in images:
        im = Image.fromarray(np.asarray(im, dtype=np.uint8))
        scale = size / min(im.size)
        w, h = max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        out.append(np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _embedding(out) -> torch.Tensor:
    # transformers returns a tensor (4.x) or an output whose pooler_output is the projection (5.x)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class TransformersCLIP:
    def __init__(self, model, tokenizer, *, image_size: int | None = None, device=None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.image_size = validate.positive_int(image_size or model.config.vision_config.image_size, "image_size")
        self.device = device or next(model.parameters()).device

    @classmethod
    def load(cls, path_or_name: str, *, allow_download: bool = False, **options) -> "TransformersCLIP":
        from transformers import CLIPModel, CLIPTokenizer

        local = not allow_download
        try:
            model = CLIPModel.from_pretrained(path_or_name, local_files_only=local)
            tokenizer = CLIPTokenizer.from_pretrained(path_or_name, local_files_only=local)
        except OSError as exc:
            raise FileNotFoundError(f"no CLIP model {path_or_name!r} in that directory or the local hub cache "
                                    f"({exc}); pass allow_download=True to fetch it") from None
        return cls(model, tokenizer, **options)

    def encode_images(self, images) -> torch.Tensor:
        with torch.no_grad():
            x = clip_pixels(images, self.image_size).to(self.device)
            return _embedding(self.model.get_image_features(pixel_values=x)).float().cpu()

    def encode_texts(self, words) -> torch.Tensor:
        tokens = self.tokenizer(list(words), padding=True, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                               attention_mask=tokens["attention_mask"].to(self.device))
        return _embedding(out).float().cpu()

    def fingerprint(self) -> str:
        return f"transformers-clip:{state_hash(self.model)}:{self.image_size}"


class OpenCLIP:
    def __init__(self, model, tokenizer, *, image_size: int = 224, device=None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.image_size = validate.positive_int(image_size, "image_size")
        self.device = device or next(model.parameters()).device

    def encode_images(self, images) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_image(clip_pixels(images, self.image_size).to(self.device)).float().cpu()

    def encode_texts(self, words) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(list(words)).to(self.device)).float().cpu()

    def fingerprint(self) -> str:
        return f"open-clip:{state_hash(self.model)}:{self.image_size}"
