"""Train an SAE with sae_lens' own training runner on an HF model, through the adapter.

Used by ``auto-hookpoint train-sae`` and ``examples/train_sae.py``. The text is the
Python documentation bundled with CPython (so nothing is downloaded); the SAE is saved
in sae_lens' own format (``cfg.json`` and ``sae_weights.safetensors``), loadable with
``StandardSAE.load_from_disk``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from auto_hookpoint.adapter.adapter import HookedTransformerAdapter
from auto_hookpoint.errors import SAE_LENS_MISSING


def train_sae(
    adapter: HookedTransformerAdapter,
    hook_name: str,
    out_dir: Path,
    steps: int = 400,
    expansion: int = 4,
    context_size: int = 32,
    batch_tokens: int = 256,
) -> tuple[Any, dict[str, Any]]:
    """Train for ``steps`` steps (sae_lens shows its progress bar), save to ``out_dir``,
    and return (the SAE, sae_lens' eval metrics)."""
    try:
        from datasets import Dataset
        from sae_lens import LanguageModelSAERunnerConfig
    except ImportError as error:
        raise ImportError(f"training an SAE needs sae_lens: {SAE_LENS_MISSING}") from error
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        StandardTrainingSAEConfig,
    )
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    from auto_hookpoint.demo import demo_corpus

    d_in = adapter.cfg.d_model
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(
            d_in=d_in, d_sae=expansion * d_in, l1_coefficient=0.5,
            normalize_activations="expected_average_only_in",
        ),
        model_name=adapter.cfg.model_name, hook_name=hook_name, is_dataset_tokenized=False,
        streaming=False, context_size=context_size, training_tokens=steps * batch_tokens,
        train_batch_size_tokens=batch_tokens, store_batch_size_prompts=8, n_batches_in_buffer=16,
        n_batches_for_norm_estimate=10, lr=3e-3, logger=LoggingConfig(log_to_wandb=False),
        device=adapter.cfg.device or "cpu", output_path=tempfile.mkdtemp(), n_checkpoints=0,
        verbose=False,
    )  # fmt: skip
    dataset = Dataset.from_dict({"text": demo_corpus()})
    runner = LanguageModelSAETrainingRunner(cfg, override_model=adapter, override_dataset=dataset)
    sae = runner.run()
    sae.save_model(out_dir)
    evals = EvalConfig(
        n_eval_reconstruction_batches=4, compute_ce_loss=True, compute_variance_metrics=True,
        compute_sparsity_metrics=True, n_eval_sparsity_variance_batches=4, batch_size_prompts=4,
    )  # fmt: skip
    metrics, _ = run_evals(
        sae, runner.activations_store, adapter, ActivationScaler(), evals,
        exclude_special_tokens=False,
    )  # fmt: skip
    return sae, metrics


def summary(metrics: dict[str, Any]) -> str:
    quality, sparsity = metrics["reconstruction_quality"], metrics["sparsity"]
    ce = metrics["model_performance_preservation"]
    return (
        f"explained variance {quality['explained_variance']:.3f}, L0 {sparsity['l0']:.1f}, "
        f"CE loss {ce['ce_loss_without_sae']:.3f} -> {ce['ce_loss_with_sae']:.3f} "
        "with the SAE spliced in"
    )
