"""FraudMLP: shapes, TorchScript, determinism on the CPU, and the class-imbalance weight."""

from __future__ import annotations

import io

import pytest
import torch

from backline.core.errors import SchemaError
from backline.train.model import ModelConfig, pos_weight
from backline.train.state import parameter_sha256

CONFIG = ModelConfig(n_numeric=6, vocab_sizes=(5, 3), embedding_dim=4, hidden=(16, 8), dropout=0.2)


def inputs(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n, 2), generator=g)


def test_forward_shapes_and_layers() -> None:
    torch.manual_seed(0)
    model = CONFIG.build()
    x_num, x_cat = inputs()
    assert model(x_num, x_cat).shape == (32,)
    assert [e.num_embeddings for e in model.embeddings] == [5, 3]
    first = model.mlp[0]
    assert isinstance(first, torch.nn.Linear) and first.in_features == 6 + 2 * 4
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.mlp) == 2
    assert sum(isinstance(m, torch.nn.Dropout) for m in ModelConfig(6, (5,)).build().mlp) == 0


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")


def test_scripted_model_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    model = CONFIG.build().eval()
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x_num, x_cat = inputs()
    assert torch.equal(loaded(x_num, x_cat), model(x_num, x_cat))


def test_exports_with_a_dynamic_batch() -> None:
    # TorchScript is deprecated in torch 2.13; torch.export is the other artifact DESIGN allows
    torch.manual_seed(0)
    model = CONFIG.build().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, inputs(8), dynamic_shapes=({0: batch}, {0: batch}))
    x_num, x_cat = inputs(5)
    assert torch.equal(program.module()(x_num, x_cat), model(x_num, x_cat))


@pytest.mark.parametrize("config", [ModelConfig(0, (4, 4), 3, (8,)), ModelConfig(5, (), 3, (8,))])
def test_only_numeric_or_only_categorical_inputs_work(config: ModelConfig) -> None:
    model = torch.jit.script(config.build())
    x_num = torch.randn(7, config.n_numeric)
    x_cat = torch.zeros(7, len(config.vocab_sizes), dtype=torch.int64)
    assert model(x_num, x_cat).shape == (7,)


def test_same_seed_same_weights_and_outputs_including_dropout() -> None:
    def one_run() -> tuple[str, torch.Tensor]:
        torch.manual_seed(3)
        model = CONFIG.build().train()
        return parameter_sha256(model), model(*inputs())

    (sha_a, out_a), (sha_b, out_b) = one_run(), one_run()
    assert sha_a == sha_b and torch.equal(out_a, out_b)
    torch.manual_seed(4)
    assert parameter_sha256(CONFIG.build()) != sha_a


def test_config_json_round_trip() -> None:
    assert ModelConfig.from_json(CONFIG.to_json()) == CONFIG
    with pytest.raises(SchemaError, match="model config JSON is not valid"):
        ModelConfig.from_json("{}")


def test_pos_weight_is_negatives_over_positives() -> None:
    assert pos_weight(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])) == 2.0
    with pytest.raises(SchemaError, match="single class"):
        pos_weight(torch.zeros(4))
