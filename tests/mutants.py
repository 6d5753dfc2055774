"""Plants small, plausible bugs one at a time and checks the test suite catches each one.

    make mutants                                  # 17 min on 2 cores (75 mutants); outside CI
    python tests/mutants.py "beam" "CLIP"         # those whose name contains a word

Each mutant names a file, a snippet and its mutated form, and the tests that should fail.
Bugs are planted in a scratch copy of the checkout (the files git tracks or would add), whose
package shadows the installed one through PYTHONPATH, so the working tree is never touched: a
commit made while mutants run once took a planted bug with it. Prints one line per mutant and
exits non-zero if any survives, so the suite keeps its teeth as it grows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MUTANTS = [
    ("GAN generator gradient cut", "genzoo/models/gan.py",
     'fake, stats = _apply(Generator(c), params, stats, "generator", z_BxZ, train)',
     'fake, stats = _apply(Generator(c), params, stats, "generator", z_BxZ, train)\n'
     "    fake = jax.lax.stop_gradient(fake)",
     "tests/test_gan.py"),
    ("VAE std = exp(logvar)", "genzoo/models/vae.py",
     "jnp.exp(0.5 * logvar_BxZ) * eps_BxZ", "jnp.exp(logvar_BxZ) * eps_BxZ", "tests/test_vae.py"),
    ("step rng not folded with the step", "genzoo/train_step.py",
     "rng = jax.random.fold_in(state.rng, state.step)", "rng = state.rng", "tests/test_teeth.py"),
    ("HMM scores shifted windows", "genzoo/models/hmm.py",
     'batch["inputs"][:, :1], batch["targets"]', 'batch["inputs"][:, -1:], batch["targets"]',
     "tests/test_teeth.py tests/test_hmm.py"),
    ("eval drops the split's tail", "genzoo/data/text.py",
     "num_windows = -(-(len(tokens) - 1) // L)", "num_windows = (len(tokens) - 1) // L",
     "tests/test_data.py"),
    ("weight decay on 1-D parameters", "genzoo/optim.py",
     "lambda p: p.ndim >= 2, params", "lambda p: p.ndim >= 1, params", "tests/test_teeth.py"),
    ("Adam moments replicated", "genzoo/sharding.py",
     "            if suffix in by_path and shapes[suffix] == leaf.shape:",
     "            if False:", "tests/test_teeth.py"),
    ("MLP kernel not sharded over tensor", "genzoo/layers/basic.py",
     '("embed", "mlp")', '("embed", None)', "tests/test_teeth.py"),
    ("causal mask off by one", "genzoo/layers/attention.py",
     "jnp.arange(T)[None, :] <= q_pos_L[:, None]", "jnp.arange(T)[None, :] <= q_pos_L[:, None] + 1",
     "tests/test_layers.py"),
    ("padding mask ignored", "genzoo/layers/attention.py",
     "allowed_BxLxT = allowed_BxLxT & key_valid_BxT[:, None, :]", "pass",
     "tests/test_layers.py tests/test_transformer.py"),
    ("packed rows attend across examples", "genzoo/layers/attention.py",
     "allowed_BxLxT = allowed_BxLxT & (segments_BxL[:, :, None] == key_segments_BxT[:, None])",
     "pass", "tests/test_transformer.py"),
    ("key gradient keeps only its own query block's share", "genzoo/layers/attend.py",
     "for p in parts[j:])", "for p in parts[j:][:1])", "tests/test_layers.py"),
    ("flash backward forgets dropout's scale", "genzoo/layers/flash.py",
     "dp = jnp.where(keep, dp * keep_scale, 0.0)", "dp = jnp.where(keep, dp, 0.0)",
     "tests/test_flash.py"),
    ("flash causal bound for unequal tiles", "genzoo/layers/flash.py",
     "lax.div(block_q * (i + 1) + block_k - 1, block_k) if causal", "i + 1 if causal",
     "tests/test_flash.py"),
    ("flash shards number dropout streams locally", "genzoo/layers/flash.py",
     "first = jnp.asarray(first_b * H + first_h).astype(jnp.uint32)", "first = jnp.uint32(0)",
     "tests/test_flash.py"),
    ("flash on a mesh without shard_map", "genzoo/layers/flash.py",
     "    if spec is None:\n        out_BxPxHxK", "    if True:\n        out_BxPxHxK",
     "tests/test_flash.py"),
    ("flash backward ignores segments", "genzoo/layers/flash.py",
     "segs = (qseg_ref[rows_sl], kseg) if segmented else None", "segs = None",
     "tests/test_flash.py"),
    ("flash backward's causal start in inner blocks", "genzoo/layers/flash.py",
     "lax.fori_loop(j * per if causal", "lax.fori_loop(j * per + 1 if causal",
     "tests/test_flash.py"),
    ("flash dq stops at the outer block's first inner block", "genzoo/layers/flash.py",
     "(j + 1) * per if causal", "j * per + 1 if causal", "tests/test_flash.py"),
    ("padded keys keep their segment", "genzoo/layers/attention.py",
     "k_seg_BxT = jnp.where(key_valid_BxT, k_seg_BxT, flash.NO_QUERY)", "pass",
     "tests/test_flash.py"),
    ("flash counters number the padded keys", "genzoo/layers/flash.py",
     "numbering = (H, T)", "numbering = (H, -(-max(L, T) // 32) * 32)", "tests/test_flash.py"),
    ("environment not checked at start", "genzoo/cli.py",
     "        check_environment()\n", "", "tests/test_bad_input.py"),
    ("dropout hash left unmixed", "genzoo/layers/dropout.py",
     "x = mix(mix((counter * jnp.uint32(_GOLDEN)) ^ key) + seed1)",
     "x = (counter * jnp.uint32(_GOLDEN)) ^ key", "tests/test_layers.py"),
    ("BERT masks 90% with [MASK]", "genzoo/models/bert.py",
     "u_BxL < 0.8, c.mask_id", "u_BxL < 0.9, c.mask_id", "tests/test_bert.py"),
    ("BERT scores unpicked positions", "genzoo/models/bert.py",
     "jnp.argsort(~picked_BxL, axis=1", "jnp.argsort(picked_BxL, axis=1", "tests/test_bert.py"),
    ("model state not written back", "genzoo/train_step.py",
     "params = _with_model_state(family, optax.apply_updates(state.params, updates), model_state)",
     "params = optax.apply_updates(state.params, updates)",
     "tests/test_model_state.py tests/test_gan.py"),
    ("EMA weights swapped", "genzoo/train_step.py",
     "e + (1.0 - ema_decay) * (p - e)", "e + ema_decay * (p - e)", "tests/test_model_state.py"),
    ("EMA not what evaluation uses", "genzoo/train_step.py",
     "return self.params if self.ema is None else self.ema", "return self.params",
     "tests/test_model_state.py"),
    ("bf16 step projects q, k, v in float32", "genzoo/layers/attention.py",
     "    w_DxNxHxK = w_DxNxHxK.astype(dtype)\n", "    w_DxNxHxK = w_DxNxHxK.astype(jnp.float32)\n",
     "tests/test_gpt.py"),
    ("magnitude pruning keeps the smallest weights", "genzoo/pruning.py",
     "keep = lambda p: jnp.abs(p) > cut  # noqa: E731",
     "keep = lambda p: jnp.abs(p) <= cut  # noqa: E731", "tests/test_pruning.py"),
    ("pruned weights are left in place", "genzoo/pruning.py",
     "jnp.where(m, u, -p)", "jnp.where(m, u, 0.0)", "tests/test_pruning.py"),
    ("beam search keeps the parents' caches unsorted", "genzoo/sampling.py",
     "cache = jax.tree.map(per_row(lambda x: x[rows_BW]), cache)", "cache = cache",
     "tests/test_generation.py"),
    ("finished beams keep growing", "genzoo/sampling.py",
     "lengths_BxW = jnp.where(was_finished_BxW, take(lengths_BxW), take(lengths_BxW) + 1)",
     "lengths_BxW = take(lengths_BxW) + 1", "tests/test_generation.py"),
    ("repetition penalty rewards repeats", "genzoo/sampling.py",
     "logits_BxV > 0, logits_BxV / penalty, logits_BxV * penalty",
     "logits_BxV > 0, logits_BxV * penalty, logits_BxV / penalty", "tests/test_generation.py"),
    ("nucleus drops the token that crosses top_p", "genzoo/sampling.py",
     "keep_BxV = mass_before_BxV < top_p", "keep_BxV = mass_before_BxV + probs_BxV < top_p",
     "tests/test_gpt.py tests/test_generation.py"),
    ("KV cache written one slot late", "genzoo/layers/attention.py",
     "at = (0, 0, cache_index, 0)", "at = (0, 0, cache_index + 1, 0)",
     "tests/test_generation.py tests/test_gpt.py"),
    ("accumulated gradients summed, not averaged", "genzoo/train_step.py",
     "loss, grads, aux = jax.tree.map(lambda x: x / grad_accum, summed)",
     "loss, grads, aux = summed", "tests/test_trainer.py tests/test_model_state.py"),
    ("micro-batches share one dropout key", "genzoo/train_step.py",
     "family, model_cfg, params, mb, jax.random.fold_in(rng, i), state.step, deps",
     "family, model_cfg, params, mb, rng, state.step, deps",
     "tests/test_trainer.py tests/test_model_state.py"),
    ("frozen parameters are trained", "genzoo/optim.py",
     'labels = jax.tree.map(lambda label, keep: label if keep else "frozen", labels, mask)',
     "labels = jax.tree.map(lambda label, keep: label, labels, mask)",
     "tests/test_trainer.py tests/test_pruning.py"),
    ("chunked loss scores the padded vocabulary", "genzoo/evaluation/lm.py",
     "(x_BxKxD @ table_PxD.T)[..., :vocab_size]", "(x_BxKxD @ table_PxD.T)",
     "tests/test_step_memory.py"),
    ("chunked loss returns positions out of order", "genzoo/evaluation/lm.py",
     "return nll_CxBxK.swapaxes(0, 1).reshape(B, L)", "return nll_CxBxK.reshape(B, L)",
     "tests/test_step_memory.py"),
    ("int8 activations scaled for 255 levels", "genzoo/layers/quant.py",
     "absmax_Mx1 / 127.0, 1.0)", "absmax_Mx1 / 255.0, 1.0)", "tests/test_quantize.py"),
    ("CLIP trains image-to-text only", "genzoo/models/clip.py",
     '"nll": jnp.sum(0.5 * (i2t_B + t2i_B) * valid_B)', '"nll": jnp.sum(i2t_B * valid_B)',
     "tests/test_clip.py"),
    ("CLIP counts padded rows as negatives", "genzoo/models/clip.py",
     "logits_BxB = jnp.where(valid_B[None, :] > 0, logits_BxB, -1e9)", "pass",
     "tests/test_clip.py"),
    ("VQ encoder gets no reconstruction gradient", "genzoo/models/dvae.py",
     "z = h + jax.lax.stop_gradient(e - h)  # straight through", "z = e",
     "tests/test_dvae.py"),
    ("VAE KL with the log-variance's sign flipped", "genzoo/models/vae.py",
     "mean_BxZ**2 - 1.0 - logvar_BxZ", "mean_BxZ**2 - 1.0 + logvar_BxZ", "tests/test_vae.py"),
    ("guidance scale off by one", "genzoo/models/dalle.py",
     "cond + (guidance - 1.0) * (cond - uncond)", "cond + guidance * (cond - uncond)",
     "tests/test_dalle.py tests/test_text_to_image.py"),
    ("EM counts from the gradient's sign flipped", "genzoo/em.py",
     "jnp.maximum(-g, 0.0)", "jnp.maximum(g, 0.0)", "tests/test_em.py"),
    ("checkpoint checksums not compared", "genzoo/checkpoint.py",
     "if actual[name][1] != crc:", "if False:", "tests/test_reliability.py"),
    ("HMM transitions read along the wrong axis", "genzoo/models/hmm.py",
     "alpha_BxS[:, :, None] + log_A_SxS[None], axis=1",
     "alpha_BxS[:, :, None] + log_A_SxS.T[None], axis=1", "tests/test_hmm.py"),
    ("FID without the cross term's factor 2", "genzoo/evaluation/sample_quality.py",
     "np.trace(s1 + s2 - 2.0 * covmean)", "np.trace(s1 + s2 - covmean)", "tests/test_gan.py"),
    ("BLEU scores the references against the hypotheses", "genzoo/evaluation/text.py",
     '"bleu": float(bleu.corpus_score(hypotheses, streams).score)',
     '"bleu": float(bleu.corpus_score(streams[0], [hypotheses]).score)',
     "tests/test_text_metrics.py"),
    ("label smoothing pushes mass off the vocabulary", "genzoo/models/transformer.py",
     "- c.label_smoothing * logp_BxLxV.mean(-1)", "+ c.label_smoothing * logp_BxLxV.mean(-1)",
     "tests/test_transformer.py"),
    ("GAN discriminator rewards fakes", "genzoo/models/gan.py",
     "softplus(-real_logits_B) + jax.nn.softplus(fake_logits_B))",
     "softplus(-real_logits_B) + jax.nn.softplus(-fake_logits_B))", "tests/test_gan.py"),
    ("importance-weighted bound without log k", "genzoo/models/vae.py",
     "logsumexp(log_w_KxB, axis=0) - math.log(num_samples)", "logsumexp(log_w_KxB, axis=0)",
     "tests/test_vae.py"),
    ("dropout keeps values unscaled", "genzoo/layers/dropout.py",
     "jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype)", "jnp.where(keep, x",
     "tests/test_layers.py"),
    ("inverse-sqrt schedule grows after warm-up", "genzoo/optim.py",
     "jnp.minimum(step / warmup, jnp.sqrt(warmup / step))",
     "jnp.minimum(step / warmup, jnp.sqrt(step / warmup))", "tests/test_transformer.py"),
    ("temperature multiplies the logits", "genzoo/sampling.py",
     "scaled_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)",
     "scaled_BxV = logits_BxV * temperature", "tests/test_gpt.py tests/test_generation.py"),
    ("top-k keeps one token too many", "genzoo/sampling.py",
     "jnp.full((logits_BxV.shape[0], 1), k - 1)",
     "jnp.full((logits_BxV.shape[0], 1), jnp.minimum(k, V - 1))", "tests/test_gpt.py"),
    ("gradients never clipped", "genzoo/optim.py",
     "optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity()",
     "optax.identity()", "tests/test_trainer.py tests/test_config.py"),
    ("evaluation counts padded tokens", "genzoo/evaluation/lm.py",
     'return {"nll": jnp.sum(nll_BxL * mask_BxL), "num_tokens": jnp.sum(mask_BxL)}',
     'return {"nll": jnp.sum(nll_BxL), "num_tokens": jnp.sum(mask_BxL)}',
     "tests/test_data.py tests/test_gpt.py tests/test_transformer.py"),
    ("a NaN gradient with a finite loss is applied", "genzoo/train_step.py",
     'finite = jnp.isfinite(loss) & jnp.isfinite(out_metrics["grad_norm"])',
     "finite = jnp.isfinite(loss)", "tests/test_reliability.py tests/test_trainer.py"),
    ("bits per char multiplied by chars per token", "genzoo/evaluation/lm.py",
     'out["bits_per_token"] / meta["chars_per_token"]',
     'out["bits_per_token"] * meta["chars_per_token"]',
     "tests/test_tokenizer.py tests/test_cli.py"),
    ("packed positions run on across examples", "genzoo/data/examples.py",
     "pos[b, at : at + len(seq)] = np.arange(len(seq))",
     "pos[b, at : at + len(seq)] = np.arange(at, at + len(seq))",
     "tests/test_transformer.py tests/test_data.py"),
    ("resume forgets the data position", "genzoo/trainer_start.py",
     "        train_iter.set_state(data_state)\n", "",
     "tests/test_every_experiment.py::test_resume_is_bit_identical"),
    ("int8 embedding rows share one scale", "genzoo/layers/quant.py",
     "table_NxD.values[ids].astype(jnp.float32) * table_NxD.scale[ids]",
     "table_NxD.values[ids].astype(jnp.float32) * table_NxD.scale.mean()",
     "tests/test_quantize.py"),
    ("causal query blocks see half a block too few keys", "genzoo/layers/attend.py",
     "(slice(i * size, (i + 1) * size), slice(0, (i + 1) * size if blocks > 1 else T))",
     "(slice(i * size, (i + 1) * size), slice(0, (2 * i + 1) * size // 2 if blocks > 1 else T))",
     "tests/test_layers.py"),
    ("best checkpoint keeps the worst step", "genzoo/checkpoint.py",
     'return value < best["value"] if self.best_mode == "min" else value > best["value"]',
     'return value > best["value"] if self.best_mode == "min" else value < best["value"]',
     "tests/test_reliability.py"),
    ("VQ codebook counts forget earlier batches", "genzoo/models/dvae.py",
     'count_K = g * state["count"] + (1 - g) * onehot_NxK.sum(0)',
     "count_K = onehot_NxK.sum(0)", "tests/test_dvae.py"),
    ("live codes restarted instead of dead ones", "genzoo/models/dvae.py",
     "dead_K = count_K < c.restart_below", "dead_K = count_K >= c.restart_below",
     "tests/test_dvae.py"),
    ("GAN generator loss saturates", "genzoo/models/gan.py",
     "g = mean(jax.nn.softplus(-fake_logits_B))", "g = -mean(jax.nn.softplus(fake_logits_B))",
     "tests/test_gan.py"),
    ("Gumbel codes' KL to uniform with its sign flipped", "genzoo/models/dvae.py",
     "penalty_B = jnp.sum(jnp.exp(logq) * logq, (1, 2, 3))",
     "penalty_B = -jnp.sum(jnp.exp(logq) * logq, (1, 2, 3))", "tests/test_dvae.py"),
    ("a resume moves a required run to its newest step", "genzoo/requires.py",
     "        if step is None and old_path == path:\n", "        if False:\n",
     "tests/test_requires.py"),
    ("required runs pinned to their oldest step", "genzoo/requires.py",
     "step = max(steps)", "step = min(steps)", "tests/test_requires.py"),
    ("init_from overwrites the parameters named fresh", "genzoo/init_from.py",
     "under = {k: s for k, s in want.items() if k.startswith(prefix) and not is_fresh(k)}",
     "under = {k: s for k, s in want.items() if k.startswith(prefix)}",
     "tests/test_bert_import.py tests/test_trainer.py"),
]  # fmt: skip


def scratch_copy() -> Path:
    """The checkout's tracked and addable files, copied to a fresh temporary folder."""
    git = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    listed = subprocess.run(git, cwd=ROOT, capture_output=True, check=True).stdout.decode()
    scratch = Path(tempfile.mkdtemp(prefix="genzoo-mutants-"))
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, scratch / name)
    return scratch


def pytest_in(scratch: Path, tests: str) -> int:
    """pytest's exit code for `tests` run in `scratch`, importing its genzoo."""
    paths = [str(scratch), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.split()]
    return subprocess.run(cmd, cwd=scratch, env=env, capture_output=True).returncode


def run(scratch, name, path, before, after, tests) -> bool:
    """True if the tests (run in `scratch`, with the mutant planted there) catch it."""
    file = scratch / path
    original = file.read_text()
    if original.count(before) != 1:
        print(f"STALE     {name}: snippet not found once in {path}")
        return False
    try:
        file.write_text(original.replace(before, after))
        code = pytest_in(scratch, tests)
    finally:
        file.write_text(original)
    print(f"{'killed' if code else 'SURVIVED':<9} {name} ({tests})", flush=True)
    return code != 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # unwinds through `main`'s finally: the scratch copy is removed


def main(names: list[str]) -> int:
    """Every mutant, or those whose name contains one of `names`."""
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` or a timeout, as Ctrl-C
    chosen = [m for m in MUTANTS if not names or any(n in m[0] for n in names)]
    scratch = scratch_copy()
    try:
        # A copy that fails its own tests would "kill" every mutant: check it passes first.
        if pytest_in(scratch, "tests/test_teeth.py") != 0:
            print(f"the unmutated copy in {scratch} fails tests/test_teeth.py: nothing planted")
            return 2
        results = [run(scratch, *m) for m in chosen]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{sum(results)} of {len(results)} mutants killed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
