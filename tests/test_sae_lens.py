"""sae_lens end to end through the adapter: its own training runner, activation store and evals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

pytest.importorskip("sae_lens")  # sae_lens 6 needs TransformerLens 3

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sae_lens import (  # noqa: E402
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardTrainingSAEConfig,
)
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.training.activation_scaler import ActivationScaler

from auto_hookpoint.adapter import HookedTransformerAdapter
from auto_hookpoint.demo import demo_corpus, demo_model, demo_tokenizer


def runner_config(hook_name: str, output: Path, steps: int = 400) -> LanguageModelSAERunnerConfig:
    batch = 256
    return LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(
            d_in=64, d_sae=256, l1_coefficient=0.5, normalize_activations="expected_average_only_in"
        ),
        model_name="demo-llama",
        hook_name=hook_name,
        is_dataset_tokenized=False,
        streaming=False,
        context_size=32,
        training_tokens=steps * batch,
        train_batch_size_tokens=batch,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        n_batches_for_norm_estimate=10,
        lr=3e-3,
        logger=LoggingConfig(log_to_wandb=False),
        device="cpu",
        output_path=str(output),
        n_checkpoints=0,
        verbose=False,
    )


@pytest.fixture(scope="module")
def corpus() -> Dataset:
    return Dataset.from_dict({"text": demo_corpus()})


@pytest.mark.parametrize("hook_name", ["model.layers.1.hook_point", "blocks.1.hook_resid_post"])
def test_training_runner_learns_an_sae_and_its_evals_run(
    hook_name: str, corpus: Dataset, tmp_path: Path
) -> None:
    adapter = HookedTransformerAdapter(demo_model(num_layers=4), demo_tokenizer())
    runner = LanguageModelSAETrainingRunner(
        runner_config(hook_name, tmp_path), override_model=adapter, override_dataset=corpus
    )
    untrained = copy.deepcopy(runner.sae)
    sae = runner.run()
    untrained.cfg.metadata = copy.deepcopy(sae.cfg.metadata)

    evals = EvalConfig(
        n_eval_reconstruction_batches=2, compute_ce_loss=True, compute_variance_metrics=True,
        compute_sparsity_metrics=True, n_eval_sparsity_variance_batches=2, batch_size_prompts=4,
    )  # fmt: skip
    store = runner.activations_store
    before, _ = run_evals(
        untrained, store, adapter, ActivationScaler(), evals, exclude_special_tokens=False
    )
    after, _ = run_evals(
        sae, store, adapter, ActivationScaler(), evals, exclude_special_tokens=False
    )
    quality_before, quality_after = (
        before["reconstruction_quality"],
        after["reconstruction_quality"],
    )
    assert quality_after["explained_variance"] > 0.5 > quality_before["explained_variance"]
    assert quality_after["mse"] < quality_before["mse"] / 4  # the loss fell
    # CE loss with the SAE spliced in ran through run_with_hooks(return_type="both").
    assert torch.isfinite(torch.tensor(after["model_performance_preservation"]["ce_loss_with_sae"]))

    # sae_lens' own save format round-trips.
    sae.save_model(tmp_path / "sae")
    loaded = type(sae).load_from_disk(tmp_path / "sae")
    activations = store.get_activations(store.get_batch_tokens(2)).reshape(-1, 64)
    assert torch.equal(loaded.encode(activations), sae.encode(activations))


def test_activation_store_reads_what_the_plain_hf_model_computes(
    corpus: Dataset, tmp_path: Path
) -> None:
    model = demo_model(num_layers=4)
    plain = copy.deepcopy(model)
    adapter = HookedTransformerAdapter(model, demo_tokenizer())
    runner = LanguageModelSAETrainingRunner(
        runner_config("model.layers.1.hook_point", tmp_path),
        override_model=adapter,
        override_dataset=corpus,
    )
    tokens = runner.activations_store.get_batch_tokens(4)
    activations = runner.activations_store.get_activations(tokens)
    with torch.no_grad():
        hidden = plain(tokens, output_hidden_states=True).hidden_states[2]  # after layers.1
    assert activations.shape == (4, 32, 64)
    assert torch.equal(activations, hidden)
