"""`fd.clip_dissect`: label units with words and no labels at all, CLIP-Dissect's way (Oikarinen &
Weng 2023). A CLIP model embeds the probe images and the words; their cosine similarities (N, C) and
each unit's per-image activation (the mean of its map, as CLIP-Dissect) give each unit's score for
every word (soft-WPMI by default, engine/wpmi.py); its label is the best word.

`clip` is any object with `encode_images(images) -> (N, d)` (images: a list of (H, W, 3) uint8
arrays) and `encode_texts(words) -> (C, d)`; pipeline/clip_models.py adapts open_clip and
transformers' CLIPModel. When it also has `fingerprint()` (a hash of its weights), the image
embeddings are cached per (CLIP, data set) in `cache` (a directory; a tensor file per pair), so a
second dissection with other words or another target model costs one forward pass of the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import validate
from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD
from ..engine.wpmi import cos_cubed, soft_wpmi, wpmi
from ..files import atomic, tensorfile
from ..files.atomic import digest
from .hooks import find_modules
from .image_results import LayerResults
from .images import image_scores

SIMILARITIES = {"soft_wpmi": soft_wpmi, "wpmi": wpmi, "cos_cubed": cos_cubed}
CACHE_KIND = "clip-image-embeddings"


def read_words(concepts) -> list[str]:
    """A list of words, or a text file of one word (or phrase) per line; blank lines skipped."""
    if isinstance(concepts, (str, Path)):
        path = Path(concepts)
        if not path.is_file():
            raise FileNotFoundError(f"concepts: no word list at {path} (one word or phrase per line)")
        words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        words = [str(w) for w in concepts]
    if not words:
        raise ValueError("concepts: the word list is empty")
    twice = sorted({w for w in words if words.count(w) > 1})
    if twice:
        raise ValueError(f"concepts lists words twice: {twice[:10]}")
    return words


def _image_of(dataset, i: int):
    return dataset.image(i) if hasattr(dataset, "image") else dataset[i].image


def image_embeddings(clip, dataset, *, batch_size: int, cache, verbose: bool) -> torch.Tensor:
    """(N, d) CLIP embeddings of the data set's images, from the cache when it holds them."""
    from tqdm.auto import tqdm

    key = None
    if cache is not None and callable(getattr(clip, "fingerprint", None)) and hasattr(dataset, "fingerprint"):
        key = digest(f"{clip.fingerprint()}|{sorted(dataset.fingerprint().items())}".encode())
        path = Path(cache) / f"clip-images-{key}{tensorfile.SUFFIX}"
        if path.is_file():
            return tensorfile.read(path, kind=CACHE_KIND)["embeddings"]
    parts = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="clip images", unit="batch", disable=not verbose):
        images = [_image_of(dataset, i) for i in range(start, min(start + batch_size, len(dataset)))]
        with torch.no_grad():
            e = torch.as_tensor(clip.encode_images(images)).detach().double().cpu()
        if e.dim() != 2 or e.shape[0] != len(images):
            raise ValueError(f"clip.encode_images returned shape {tuple(e.shape)} for {len(images)} images, "
                             "expected (images, dim)")
        parts.append(e)
    emb = torch.cat(parts)
    if key is not None:
        atomic.make_dirs(cache)
        atomic.write_bytes(path, tensorfile.dumps({"embeddings": emb}, kind=CACHE_KIND))
    return emb


def similarities(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(N, C) cosine similarities of images and words."""
    if text_emb.dim() != 2 or text_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(f"clip.encode_texts returned shape {tuple(text_emb.shape)}; the image embeddings are "
                         f"{image_emb.shape[1]}-dimensional")
    a = image_emb / image_emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = text_emb / text_emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.t()


@dataclass
class ClipLayerResult:
    layer: str
    values: torch.Tensor   # (K, C) float64 score of every unit and word
    words: list[str]
    similarity: str

    def top_words(self, unit: int, count: int = 5) -> list[tuple[str, float]]:
        v, i = self.values[unit].topk(min(count, len(self.words)))
        return [(self.words[j], float(x)) for j, x in zip(i.tolist(), v.tolist())]

    @property
    def units(self) -> list[dict]:
        return [{"unit": k, "label": self.top_words(k, 1)[0][0], "score": self.top_words(k, 1)[0][1],
                 "top_words": "; ".join(w for w, _ in self.top_words(k))} for k in range(self.values.shape[0])]


class ClipDissection(LayerResults):
    """{layer: ClipLayerResult}: what `fd.clip_dissect` returns."""

    csv_suffix = "clip"


def clip_dissect(model: torch.nn.Module, layers, images, concepts, *, clip, top_k: int = 100,
                 similarity: str = "soft_wpmi", batch_size: int = 32, image_size=None, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, transform: dict | None = None, cache=None, verbose: bool = True) -> ClipDissection:
    """Labels every unit of `layers` with a word of `concepts` (a list, or a file of one per line),
    from `images` (any data set fastdissect reads, or an `fd.datasets.ImageTags`) and a CLIP model."""
    validate.module(model)
    layers = validate.layer_names(layers)
    find_modules(model, layers)
    validate.choice(similarity, "similarity", tuple(SIMILARITIES))
    for name in ("encode_images", "encode_texts"):
        if not callable(getattr(clip, name, None)):
            raise validate.ArgumentTypeError(f"clip must have {name}() (see fastdissect.pipeline.clip_models for "
                                             f"adapters), got {type(clip).__name__}")
    words = read_words(concepts)
    validate.integer(top_k, "top_k", low=1, high=len(images), what=f"at most the {len(images)} images")
    sim = similarities(image_embeddings(clip, images, batch_size=batch_size, cache=cache, verbose=verbose),
                       torch.as_tensor(clip.encode_texts(words)).detach().double().cpu())
    was_training = model.training
    model.eval()
    try:
        scores = image_scores(model, layers, images, reduce="mean", batch_size=batch_size,
                              image_size=validate.image_size(image_size), mean=tuple(mean), std=tuple(std),
                              transform=transform, verbose=verbose)
    finally:
        model.train(was_training)
    fn = SIMILARITIES[similarity]
    options = {"top_k": top_k} if similarity != "cos_cubed" else {}
    results = {name: ClipLayerResult(name, fn(sim, s, **options), words, similarity) for name, s in scores.items()}
    identity = {"layers": layers, "similarity": similarity, "top_k": top_k, "words": digest("\n".join(words).encode()),
                "clip": clip.fingerprint() if callable(getattr(clip, "fingerprint", None)) else type(clip).__name__}
    return ClipDissection(results, identity)
