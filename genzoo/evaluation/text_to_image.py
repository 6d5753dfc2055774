"""How well a text-to-image model draws what it is told, judged in-tree.

For the first `num_captions` captions of the seen split (the run's eval split: attribute
combinations the model trained on) and of `heldout` (combinations it never saw), draw
`candidates` images per caption with guidance scale 1 and `guidance`; "first" is one draw
(no reranking), "reranked" CLIP's best of the candidates. Each of the 2 x 2 settings gets:
- attribute accuracy: the judge run (`judge_workdir`) reads the shapes, colours, sizes and
  relation of each image; `scene_accuracy` needs all of them right;
- `clip_score`: 100 x cosine of the image and its caption under the CLIP run the model
  requires (what reranking maximises, so it flatters the reranked column);
- `fid`: Fréchet distance of the judge's features of the drawn images to those of the real
  images of the same captions (few samples: comparable across settings of one run only).
Figures are `{seen|heldout}/{g1|gS}/{first|reranked}/{figure}`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genzoo import kinds
from genzoo.errors import UserError
from genzoo.evaluation.sample_quality import frechet_distance
from genzoo.kinds.text_to_image import rerank


def _judge(judge_workdir: str):
    from genzoo import workdir

    if not Path(judge_workdir).is_dir():
        raise UserError(f"no judge run at {judge_workdir}: train it with "
                        "`genzoo train shapes_judge --variant cpu`")  # fmt: skip
    return kinds.api_of(workdir.open_run(Path(judge_workdir)))


def _figures(judge, clip, images, captions, real_features) -> dict:
    right = judge.judge(images, captions)
    out = {f"{name}_accuracy": float(np.mean(hits)) for name, hits in right.items()}
    out["clip_score"] = float(clip.pair_scores(images, captions).mean())
    out["fid"] = frechet_distance(real_features, judge.features(images))
    return out


def evaluate(run, split: str, *, judge_workdir: str, num_captions: int = 200, candidates: int = 8,
             guidance: float = 3.0, max_examples: int = 0) -> dict:  # fmt: skip
    model, judge = kinds.api_of(run), _judge(judge_workdir)
    n = min(num_captions, max_examples) if max_examples > 0 else num_captions
    figures = {}
    for subset, name in ((split, "seen"), ("heldout", "heldout")):
        if subset not in run.data.splits:
            continue
        captions = run.data.texts[subset][:n]
        real_features = judge.features(run.data.real_images(subset, len(captions)))
        for scale in sorted({1.0, float(guidance)}):
            images, scores = model.generate(captions, candidates=candidates, keep=candidates,
                                            guidance=scale, seed=int(run.cfg.eval.seed),
                                            ranked=False)  # fmt: skip
            best_C = rerank(scores, 1)[:, 0]
            picks = {"first": images[:, 0], "reranked": images[np.arange(len(images)), best_C]}
            for pick, chosen in picks.items():
                got = _figures(judge, model.clip, chosen, captions, real_features)
                figures.update({f"{name}/g{scale:g}/{pick}/{k}": v for k, v in got.items()})
    return figures
