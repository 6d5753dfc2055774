"""CLIP's figures over whole splits: retrieval recall@k and zero-shot classification.

Recall counts a hit when a retrieved caption (image -> text) or a retrieved image's
caption (text -> image) reads the same as the query's own: the procedural captions repeat
("a small red circle" has many pictures), so a match by identity would punish the model
for ties it cannot break. Queries are each example's canonical caption. Zero-shot
accuracy (data with classes, Fashion-MNIST): each class is the mean embedding of its
caption templates, and an image takes the nearest class.
"""

from __future__ import annotations

import numpy as np

from genzoo import kinds


def recall_at(similarity_QxN: np.ndarray, same_QxN: np.ndarray, ks=(1, 5)) -> dict:
    """Fraction of queries with a right answer among their k most similar candidates."""
    order_QxN = np.argsort(-similarity_QxN, axis=1, kind="stable")
    hits_QxN = np.take_along_axis(same_QxN, order_QxN, axis=1)
    return {k: float(np.mean(hits_QxN[:, :k].any(axis=1))) for k in ks}


def evaluate(run, split: str, *, splits=(), max_examples: int = 1000) -> dict:
    """`{split}/i2t_recall@k`, `{split}/t2i_recall@k` (k = 1, 5) for `splits` (default:
    the eval split), and `{split}/zero_shot_accuracy` where the data has classes."""
    clip, figures = kinds.api_of(run), {}
    for name in splits or (split,):
        n = min(max_examples, len(run.data.texts[name])) if max_examples > 0 else None
        texts = run.data.texts[name][:n]
        images = run.data.real_images(name, len(texts))
        image_NxE = clip.encode_images(images)
        unique = sorted(set(texts))
        text_UxE = clip.encode_texts(unique)
        caption_N = np.array([unique.index(t) for t in texts])
        same_NxU = caption_N[:, None] == np.arange(len(unique))[None]
        for k, r in recall_at(image_NxE @ text_UxE.T, same_NxU).items():
            figures[f"{name}/i2t_recall@{k}"] = r
        query_NxE = text_UxE[caption_N]
        same_NxN = caption_N[:, None] == caption_N[None]
        for k, r in recall_at(query_NxE @ image_NxE.T, same_NxN).items():
            figures[f"{name}/t2i_recall@{k}"] = r
        prompts = getattr(run.data, "class_prompts", None)
        if prompts:
            labels_N = run.data.labels(name)[: len(texts)]
            figures[f"{name}/zero_shot_accuracy"] = zero_shot(clip, images, prompts, labels_N)
    return figures


def zero_shot(clip, images, class_prompts, labels_N) -> float:
    """Accuracy of classifying images by their nearest class-prompt embedding."""
    classes_KxE = np.stack([clip.encode_texts(p).mean(0) for p in class_prompts])
    classes_KxE /= np.linalg.norm(classes_KxE, axis=1, keepdims=True)
    predicted_N = np.argmax(clip.encode_images(images) @ classes_KxE.T, axis=1)
    return float(np.mean(predicted_N == labels_N))
