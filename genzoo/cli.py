"""`genzoo list | train | eval | sample`: argument parsing and error reporting only.

Any `UserError` (and any argument error) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from genzoo.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; the contract is one line
        raise UserError(message)


def _cmd_list(args) -> None:
    from genzoo import experiment

    rows = [("experiment", "family", "data", "description"), *experiment.list_experiments()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


def _cmd_train(args) -> None:
    from genzoo import experiment, workdir

    overrides = list(args.set or ())
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    cfg = experiment.load(args.experiment, args.variant, overrides)
    run_dir = Path(args.workdir or Path("runs") / cfg.experiment.name)
    frozen, data = workdir.prepare_training(cfg, run_dir)
    from genzoo import metrics
    from genzoo.trainer import Trainer

    trainer = Trainer(frozen)  # compiles nothing yet, but validates mesh and batch sizes
    init_params = None
    # Orbax names step folders by number; an empty checkpoints/ (a run that died before its
    # first save) must still start from init_from.
    has_step = any(p.name.isdigit() for p in (run_dir / "checkpoints").glob("*"))
    if frozen.train.init_from and not has_step:
        init_params = workdir.open_run(Path(frozen.train.init_from)).state.params
        trainer.check_params(init_params)  # before the workdir exists
    workdir.save_config(frozen, run_dir, data)
    trainer.fit(run_dir, data, init_params)
    plot = metrics.plot_curves(run_dir)
    print(f"checkpoints: {run_dir / 'checkpoints'}")
    print(f"metrics:     {run_dir / 'metrics.jsonl'} (TensorBoard: {run_dir / 'tensorboard'})")
    if plot:
        print(f"pictures:    {plot}")


def _cmd_eval(args) -> None:
    from genzoo import workdir

    overrides = args.set or ()
    if any(not item.startswith("eval.") for item in overrides):
        raise UserError("eval --set only changes eval.* settings")
    run = workdir.open_run(Path(args.workdir), overrides)
    split = args.split or run.cfg.eval.split
    figures = run.trainer.evaluate(run.state.params, run.data, split, max_batches=-1)
    figures = {"step": run.step, "split": split, **figures}
    if run.cfg.eval.classifier_workdir:
        import jax

        from genzoo import models
        from genzoo.evaluation import sample_quality

        family = models.get(run.cfg.model.family)
        num = run.cfg.eval.num_samples
        fake = family.sample(
            run.state.params, jax.random.PRNGKey(run.cfg.eval.seed), run.cfg.model, num=num
        )
        real = run.data.real_images(split, num)
        figures.update(sample_quality.score(fake, real, Path(run.cfg.eval.classifier_workdir)))
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>16}: {value:.6g}" if isinstance(value, float) else f"{key:>16}: {value}")


def _cmd_import(args) -> None:
    from genzoo import imports

    run_dir = imports.import_gpt2(Path(args.path), Path(args.workdir))
    print(f"imported {args.path} into {run_dir} (genzoo eval/sample --workdir {run_dir})")


def _check_sampling_args(args) -> None:
    if args.num is not None and args.num < 1:
        raise UserError("--num must be at least 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}")
    if args.beams < 1 or args.repetition_penalty <= 0:
        raise UserError("--beams must be >= 1 and --repetition-penalty > 0")


def _sample_text(args, cfg, family) -> None:
    from genzoo import api, workdir

    prompt = args.prompt if args.prompt else "\n"
    context = family.context_length(cfg.model)
    lm = api.LanguageModel(workdir.open_run(Path(args.workdir)))
    if args.max_new_tokens is None:
        args.max_new_tokens = max(1, min(200, context - len(lm.encode(prompt))))
    texts = lm.generate(
        [prompt] * (args.num or 1),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        num_beams=args.beams,
        length_penalty=args.length_penalty,
        repetition_penalty=args.repetition_penalty,
        eos=args.eos,
        stop=args.stop or (),
    )
    for i, text in enumerate(texts):
        if i:
            print("-" * 40)
        print(prompt + text)


def _sample_images(args, cfg, family) -> None:
    import jax
    import numpy as np

    from genzoo import metrics, workdir

    if args.reconstruct and not hasattr(family, "reconstruct"):
        raise UserError(f"family {cfg.model.family!r} cannot reconstruct")
    name = "reconstructions.png" if args.reconstruct else "samples.png"
    out = Path(args.out) if args.out else Path(args.workdir) / name
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist")
    run = workdir.open_run(Path(args.workdir))
    num = args.num or 64
    if args.reconstruct:
        rng = np.random.default_rng(args.seed)
        real = run.data.real_images(run.cfg.eval.split, len(run.data.splits[run.cfg.eval.split][0]))
        real = real[rng.choice(len(real), num, replace=False)]
        recon = np.asarray(family.reconstruct(run.state.params, real, run.cfg.model))
        images = np.stack([real, recon], axis=1).reshape(-1, *real.shape[1:])  # pairs side by side
        metrics.save_image_grid(images, out, columns=2 * max(1, int(np.sqrt(num))))
    else:
        images = family.sample(
            run.state.params, jax.random.PRNGKey(args.seed), run.cfg.model, num=num
        )
        metrics.save_image_grid(np.asarray(images), out)
    print(out)


def _cmd_sample(args) -> None:
    from genzoo import models, workdir

    _check_sampling_args(args)
    cfg = workdir.load_config(Path(args.workdir))
    family = models.get(cfg.model.family)
    kind = getattr(family, "KIND", None)
    if kind == "language_model":
        _sample_text(args, cfg, family)
    elif kind == "image_generator":
        _sample_images(args, cfg, family)
    else:
        raise UserError(f"family {cfg.model.family!r} does not generate samples")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genzoo", description="A JAX/Flax zoo of generative models.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("list", help="list experiments").set_defaults(fn=_cmd_list)

    t = sub.add_parser("train", help="train (or resume) an experiment")
    t.add_argument("experiment", help="a name from experiments/ or a path to an experiment file")
    t.add_argument("--workdir", help="default: runs/<experiment>")
    t.add_argument("--variant", help="e.g. smoke (CI-sized) or cpu")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--init-from", metavar="WORKDIR", help="start from this run's parameters")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate the latest checkpoint on a whole split")
    e.add_argument("--workdir", required=True)
    e.add_argument("--split", help="default: the experiment's eval.split")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--set", action="append", metavar="eval.KEY=VALUE", help="override eval.*")
    e.set_defaults(fn=_cmd_eval)

    i = sub.add_parser("import", help="import published weights into a workdir")
    i.add_argument("format", choices=["gpt2"], help="gpt2: a Hugging Face GPT-2 directory")
    i.add_argument(
        "path", help="folder with config.json, model.safetensors, vocab.json, merges.txt"
    )
    i.add_argument("--workdir", required=True)
    i.set_defaults(fn=_cmd_import)

    s = sub.add_parser("sample", help="generate from the latest checkpoint")
    s.add_argument("--workdir", required=True)
    s.add_argument("--prompt", default="", help="text to continue (default: a newline)")
    s.add_argument("--num", type=int, help="how many (default: 1 text, 64 images)")
    s.add_argument("--max-new-tokens", type=int, help="default: 200, or what fits the context")
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=0, help="0: off")
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--beams", type=int, default=1, help="beam search width (1: sample)")
    s.add_argument("--length-penalty", type=float, default=1.0, help="beams: score / len**this")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL-style; 1: off")
    s.add_argument("--eos", help="a token that ends a continuation")
    s.add_argument("--stop", action="append", help="cut the text at this string (repeatable)")
    s.add_argument("--out", help="image families: PNG path (default: WORKDIR/samples.png)")
    s.add_argument("--reconstruct", action="store_true", help="VAE: inputs beside reconstructions")
    s.set_defaults(fn=_cmd_sample)
    return p


def _quiet_libraries(verbose: bool) -> None:
    import absl.logging

    absl.logging.set_verbosity(absl.logging.INFO if verbose else absl.logging.ERROR)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _quiet_libraries(args.verbose)
        args.fn(args)
    except UserError as e:
        print(f"genzoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genzoo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
