"""`genzoo list | config | train | chain | eval | sample | import | quantize | export`: the CLI.

Any `UserError` (and any argument error) becomes one line on stderr and exit code 2; the other
ways a command can end (a NaN, a preemption, a full disk, out of memory) are `errors.ending`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import traceback
from pathlib import Path

from genzoo.errors import (
    NonFinite,
    UserError,
    check_environment,
    ending,
    quiet_storage_reports,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; the contract is one line
        raise UserError(message)


def _cmd_list(args) -> None:
    from genzoo import experiment

    rows = [("experiment", "family", "data", "description"), *experiment.list_experiments()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


def _cmd_config(args) -> None:
    from genzoo import experiment

    cfg = experiment.load(args.experiment, args.variant, list(args.set or ()))
    print(cfg.to_json_best_effort(indent=2))


def _cmd_train(args) -> None:
    from genzoo import distributed, experiment, quantize, workdir

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    overrides = list(args.set or ())
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    cfg = experiment.load(args.experiment, args.variant, overrides)
    if cfg.train.steps < 1:
        raise UserError(f"train.steps must be at least 1, got {cfg.train.steps}")
    run_dir = Path(args.workdir or Path("runs") / cfg.experiment.name)
    if quantize.is_quantized(run_dir):
        raise UserError(f"{run_dir} is a quantized copy (eval and sample only): train the original")
    lock = workdir.WriterLock(run_dir, enabled=distributed.is_main())  # file, read-only, busy
    if run_dir.is_dir():
        lock.acquire()
    try:
        _train_locked(cfg, run_dir, lock)
    finally:
        lock.release()


def _train_locked(cfg, run_dir: Path, lock) -> None:
    from genzoo import distributed, workdir

    _compilation_cache(run_dir)
    frozen, data, deps = workdir.prepare_training(cfg, run_dir)  # deps pinned, opened
    from genzoo import executables, metrics
    from genzoo.trainer import Trainer

    store = executables.for_training(executables.config_context(frozen))  # a 2nd launch loads
    trainer = Trainer(frozen, deps=deps, executables=store)  # compiles nothing yet; checks sizes
    init_params = None
    # Orbax names step folders by number; an empty checkpoints/ (a run that died before its
    # first save) must still start from init_from.
    has_step = any(p.name.isdigit() for p in (run_dir / "checkpoints").glob("*"))
    if frozen.train.init_from and not has_step:
        from genzoo import init_from

        init_params = init_from.load(frozen.train.init_from, getattr(data, "tokenizer", None))
        trainer.check_params(init_params)  # before the workdir exists
    lock.acquire()  # creates the workdir: every check has passed
    if distributed.is_main():
        workdir.save_config(frozen, run_dir, data)
    trainer.fit(run_dir, data, init_params)
    if not distributed.is_main():
        return
    plot = metrics.plot_curves(run_dir)
    print(f"checkpoints: {run_dir / 'checkpoints'}")
    print(f"metrics:     {run_dir / 'metrics.jsonl'} (TensorBoard: {run_dir / 'tensorboard'})")
    if plot:
        print(f"pictures:    {plot}")


def _compilation_cache(run_dir: Path) -> None:
    """XLA's persistent compilation cache in `.jax_cache` beside the workdir, unless one is
    configured: a second launch of the same experiment reuses its compiled step, a second
    `eval` or `sample` its evaluation or decoder (~6 s of compiling for the demo's sampler)."""
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        cache = run_dir.absolute().parent / ".jax_cache"
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _cmd_chain(args) -> None:
    from genzoo import chain

    links = chain.plan(args.experiment, args.variant, args.workdir)
    # Every link is checked before the first trains: a workdir holding another run is refused
    # now, not after an hour of training the links before it.
    done = [chain.trained(path, name, variant) for name, variant, path in links]
    for (name, variant, path), trained in zip(links, done, strict=True):
        if trained:
            print(f"chain: {path} is trained ({name}); skipping", flush=True)
            continue
        print(f"chain: genzoo train {name}" + (f" --variant {variant}" if variant else "")
              + f" --workdir {path}", flush=True)  # fmt: skip
        _cmd_train(argparse.Namespace(experiment=name, variant=variant, workdir=path, set=None,
                                      init_from=None, coordinator=None, num_processes=None,
                                      process_id=None))  # fmt: skip


def _cmd_eval(args) -> None:
    from genzoo import workdir

    overrides = args.set or ()
    if any(not item.startswith(("eval.", "mesh.")) for item in overrides):
        raise UserError("eval --set only changes eval.* and mesh.* settings")
    _compilation_cache(Path(args.workdir))
    run = workdir.open_run(Path(args.workdir), overrides, workdir.parse_checkpoint(args.checkpoint))
    split = args.split or run.cfg.eval.split
    # The whole split, unless this command asks for fewer batches (the saved eval.max_batches
    # is the training run's periodic-evaluation budget, not this command's).
    asked = any(item.startswith("eval.max_batches=") for item in overrides)
    limit = int(run.cfg.eval.max_batches) if asked else -1
    figures = run.trainer.evaluate(run.params, run.data, split, max_batches=limit)
    figures = {"step": run.step, "split": split, **({"max_batches": limit} if limit > 0 else {}),
               **figures}  # fmt: skip
    from genzoo import metrics
    from genzoo.evaluation import evaluators

    figures.update(evaluators.run_all(run, split))
    bad = [k for k, v in figures.items() if isinstance(v, float) and not math.isfinite(v)]
    if args.json:
        print(json.dumps({**metrics.json_safe(figures), **({"nonfinite": bad} if bad else {})}))
    else:
        for key, value in figures.items():
            print(f"{key:>20}: {value:.6g}" if isinstance(value, float) else f"{key:>20}: {value}")
    if bad:
        raise NonFinite(f"not finite: {', '.join(bad)} (the checkpoint at step {run.step})")


def _cmd_import(args) -> None:
    from genzoo import imports

    run_dir = {"gpt2": imports.import_gpt2, "bert": imports.import_bert}[args.format](
        Path(args.path), Path(args.workdir)
    )
    print(f"imported {args.path} into {run_dir} (genzoo eval/sample --workdir {run_dir})")


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _source_and_out(args, verb: str):
    """(the run `--workdir` names at `--checkpoint`, `--out`) for the commands that copy a
    run into a new folder; neither may be a quantized copy's or an existing path."""
    from genzoo import quantize, workdir

    out = Path(args.out)
    if out.exists():
        raise UserError(f"--out {out} exists; {verb} into a new folder")
    if quantize.is_quantized(Path(args.workdir)):
        raise UserError(f"{args.workdir} is a quantized copy: {verb} the float original")
    which = workdir.parse_checkpoint(args.checkpoint)
    return workdir.open_run(Path(args.workdir), checkpoint=which), out


def _cmd_quantize(args) -> None:
    from genzoo import quantize

    run, out = _source_and_out(args, "quantize")
    counts = quantize.write(run, out)
    print(f"quantized {counts['quantized']} weight arrays to int8 (kept {counts['kept']} float): "
          f"{_size(counts['bytes_before'])} -> {_size(counts['bytes_after'])} in {out}"
          f" (genzoo eval/sample --workdir {out})")  # fmt: skip


def _cmd_export(args) -> None:
    from genzoo import exports

    run, out = _source_and_out(args, "export")
    done = exports.write(run, out)
    print(f"exported step {run.step} as a Hugging Face {done['class']} ({done['tensors']} tensors, "
          f"{_size(done['bytes'])}; tokenizer: {', '.join(done['files']) or 'none'}) to {out}\n"
          f"PyTorch: transformers.{done['class']}.from_pretrained({str(out)!r})")  # fmt: skip


def _cmd_sample(args) -> None:
    from genzoo import kinds, models, workdir

    kinds.check_sampling(vars(args), flags=True)
    cfg = workdir.load_config(Path(args.workdir))
    _compilation_cache(Path(args.workdir))
    kind = kinds.of_family(models.get(cfg.model.family))
    if kind.sample is None:
        raise UserError(f"family {cfg.model.family!r} ({kind.name}) does not generate samples")
    mine = {o.dest for o in kind.options}
    for option in _all_sample_options():
        given = hasattr(args, option.dest)
        if given and option.dest not in mine:
            noun = kind.name.replace("_", " ")
            article = "an" if noun[0] in "aeiou" else "a"
            raise UserError(f"{option.flag} does not apply to {article} {noun}")
    for option in kind.options:
        if not hasattr(args, option.dest):
            setattr(args, option.dest, option.default)
    try:
        str(getattr(args, "prompt", "") or "").encode("utf-8")
    except UnicodeEncodeError:  # undecodable argv bytes arrive as lone surrogates
        raise UserError("--prompt is not valid UTF-8 text") from None
    if any(not item.startswith("mesh.") for item in args.set or ()):
        raise UserError("sample --set only changes mesh.* settings")
    run = workdir.open_run(Path(args.workdir), args.set or (),
                           workdir.parse_checkpoint(args.checkpoint))  # fmt: skip
    kind.sample(kind.api(run), args)


def _all_sample_options():
    """Every kind's `sample` flags, each once (kinds share some, such as --prompt)."""
    from genzoo import kinds

    seen = {}
    for kind in kinds.all_kinds().values():
        for option in kind.options:
            seen.setdefault(option.dest, option)
    return list(seen.values())


CHECKPOINT_HELP = "latest (the newest readable; default), best (checkpoint.keep_best) or a step"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genzoo", description="A JAX/Flax zoo of generative models.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("list", help="list experiments").set_defaults(fn=_cmd_list)

    g = sub.add_parser("config", help="print an experiment's config with overrides, as JSON")
    g.add_argument("experiment", help="a name from experiments/ or a path to an experiment file")
    g.add_argument("--variant", help="e.g. smoke (CI-sized) or cpu")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    g.set_defaults(fn=_cmd_config)

    t = sub.add_parser("train", help="train (or resume) an experiment")
    t.add_argument("experiment", help="a name from experiments/ or a path to an experiment file")
    t.add_argument("--workdir", help="default: runs/<experiment>")
    t.add_argument("--variant", help="e.g. smoke (CI-sized) or cpu")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--init-from", metavar="WORKDIR", help="start from this run's parameters")
    t.add_argument("--coordinator", metavar="HOST:PORT", help="multi-process: process 0's address")
    t.add_argument("--num-processes", type=int, help="multi-process: how many")
    t.add_argument("--process-id", type=int, help="multi-process: this one's index")
    t.set_defaults(fn=_cmd_train)

    c = sub.add_parser("chain", help="train an experiment after the runs it depends on")
    c.add_argument("experiment", help="the last link, such as dalle_shapes")
    c.add_argument("--variant", help="for every link that has it (e.g. cpu)")
    c.add_argument("--workdir", help="of the last link; default: runs/<experiment>")
    c.set_defaults(fn=_cmd_chain)

    e = sub.add_parser("eval", help="evaluate the latest checkpoint on a whole split")
    e.add_argument("--workdir", required=True)
    e.add_argument("--split", help="default: the experiment's eval.split")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    e.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override eval.*, mesh.* (eval.max_batches=N: N batches only)")  # fmt: skip
    e.set_defaults(fn=_cmd_eval)

    i = sub.add_parser("import", help="import published weights into a workdir")
    i.add_argument(
        "format", choices=["gpt2", "bert"], help="a Hugging Face GPT-2 or BertForMaskedLM"
    )
    i.add_argument(
        "path",
        help="config.json, model.safetensors and the tokenizer (gpt2: vocab.json, "
        "merges.txt; bert: vocab.txt)",
    )
    i.add_argument("--workdir", required=True)
    i.set_defaults(fn=_cmd_import)

    q = sub.add_parser("quantize", help="an int8 weight-only copy of a run (eval, sample)")
    q.add_argument("--workdir", required=True)
    q.add_argument("--out", required=True, help="a new workdir for the copy")
    q.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    q.set_defaults(fn=_cmd_quantize)

    x = sub.add_parser("export", help="a run as a Hugging Face folder (GPT: GPT2LMHeadModel)")
    x.add_argument("--workdir", required=True)
    x.add_argument("--out", required=True, help="a new folder: config.json, model.safetensors")
    x.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    x.set_defaults(fn=_cmd_export)

    s = sub.add_parser("sample", help="generate from the latest checkpoint")
    s.add_argument("--workdir", required=True)
    s.add_argument("--num", type=int, help="how many (default: 1 text, 64 images)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint", default="latest", help=CHECKPOINT_HELP)
    s.add_argument("--set", action="append", metavar="mesh.KEY=VALUE", help="override mesh.*")
    for option in _all_sample_options():  # given flags only: the run's kind sets defaults
        s.add_argument(option.flag, default=argparse.SUPPRESS, **option.kwargs)
    s.set_defaults(fn=_cmd_sample)
    return p


def _quiet_libraries(verbose: bool) -> None:
    import absl.logging

    absl.logging.set_verbosity(absl.logging.INFO if verbose else absl.logging.ERROR)
    level = logging.INFO if verbose else logging.WARNING
    # -v: milliseconds since start on each line, so the phases of a run (data, compile, evals,
    # saves) can be read off the log.
    fmt = "%(relativeCreated)9.0f ms  %(message)s" if verbose else "%(message)s"
    logging.basicConfig(level=level, format=fmt, force=True)  # over any library's handler
    logging.getLogger("genzoo").setLevel(level)
    if not verbose:
        quiet_storage_reports()


def main(argv=None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        check_environment()
        _quiet_libraries(args.verbose)
        if os.getcwd() not in sys.path:  # `model.family` may name a module of the user's
            sys.path.append(os.getcwd())  # last: never shadows an installed package
        args.fn(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
    except (Exception, KeyboardInterrupt) as e:
        end = ending(e, getattr(args, "command", None))
        cluster = _cluster()
        if end is None and cluster:  # a peer's exit breaks the collectives: say why it left
            end = cluster.ending_elsewhere()
        if end is None and not cluster:  # a bug: the traceback is the report
            raise
        line, code = end or (traceback.format_exc().rstrip(), 1)
        if isinstance(e, BrokenPipeError):
            _stdout_to_devnull()
        else:
            print(line, file=sys.stderr)
        if cluster:
            cluster.leave(code, line)  # returns where every process ends together
        return code
    return 0


def _cluster():
    """genzoo.distributed where this process joined a multi-process run, else None (importing
    it imports jax, which `genzoo list` must not wait for)."""
    module = sys.modules.get("genzoo.distributed")
    return module if module is not None and module.several() else None


def _stdout_to_devnull() -> None:
    """Where stdout's reader went away, Python's last flush must not fail at exit."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
