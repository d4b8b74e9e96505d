"""The network: parity with torchvision, exact sizes, the forward contract, variants, size errors."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import randomize_bn

from inceptionv3.models import builder, inception, mini, taps

SEED_DOC = Path(__file__).resolve().parents[2] / "shared" / "seed" / "000_b03b8c1e0d6c1922.txt"


@pytest.fixture(scope="module")
def tv_pair():
    """torchvision's network and ours, sharing one random state dict (BN statistics randomised too)."""
    torch.manual_seed(0)
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                         transform_input=False)
    randomize_bn(tv)
    ours = inception.inception_v3(aux_logits=True)
    ours.load_state_dict(tv.state_dict(), strict=True)
    return tv, ours


def test_state_dict_keys_match_torchvision(tv_pair):
    tv, ours = tv_pair
    assert list(ours.state_dict()) == list(tv.state_dict())
    assert len(ours.state_dict()) == 580
    for k, v in tv.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k


def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(inception.inception_v3(aux_logits=False)) == 23_834_568
    assert count(inception.inception_v3(aux_logits=True)) == 27_161_264
    assert count(mini.inception_mini()) == 925_912
    assert len(mini.inception_mini().state_dict()) == 36


def test_eval_parity_with_torchvision(tv_pair):
    tv, ours = tv_pair
    tv.eval(), ours.eval()
    x = torch.randn(2, 3, 107, 131)
    with torch.no_grad():
        ref, out = tv(x), ours(x)
    assert out.shape == (2, 1000)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_train_mode_aux_parity_with_torchvision(tv_pair):
    tv, ours = tv_pair
    tv.train(), ours.train()
    # Dropout is the only randomness in train mode; turn it off on both to compare exactly.
    tv.dropout.p = ours.dropout.p = 0.0
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        ref_logits, ref_aux = tv(x)
        logits, aux = ours.forward_train(x)
        plain = ours(x)
    ours.dropout.p = tv.dropout.p = 0.5
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(aux, ref_aux, atol=1e-4, rtol=1e-4)
    # forward() returns a Tensor in train mode too: the one forward contract.
    assert isinstance(plain, torch.Tensor) and plain.shape == (2, 1000)


def test_aux_head_on_mixed_6e_tensor():
    aux = inception.InceptionAux(768, 10)
    assert aux(torch.randn(2, 768, 17, 17)).shape == (2, 10)


@pytest.mark.parametrize("size", [(75, 75), (107, 107), (80, 150)])
def test_shapes(size):
    m = inception.inception_v3(num_classes=10, aux_logits=False).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        feats = m.forward_features(x)
        assert feats.shape[:2] == (1, 2048)
        assert m.forward_head(feats, pre_logits=True).shape == (1, 2048)
        assert m(x).shape == (1, 10)


def test_shape_at_299_with_aux():
    m = inception.inception_v3(num_classes=10, aux_logits=True).eval()
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, 299, 299))
    assert feats.shape == (1, 2048, 8, 8)


def test_too_small_input_errors_clearly():
    m = inception.inception_v3(num_classes=10, aux_logits=False).eval()
    with pytest.raises(ValueError, match=r"74x80 .*at least 75 px"):
        m(torch.randn(1, 3, 74, 80))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(3, 80, 80))
    aux = inception.inception_v3(num_classes=10, aux_logits=True).train()
    with pytest.raises(ValueError, match=r"aux head.*aux_logits=False.*299 px"):
        aux.forward_train(torch.randn(1, 3, 107, 107))


def test_forward_intermediates_table():
    m = inception.inception_v3(num_classes=7, aux_logits=False).eval()
    x = torch.randn(1, 3, 107, 107)
    with torch.no_grad():
        out = m.forward_intermediates(x, list(taps.TAPS))
        ref = m(x)
    for name, tap in taps.TAPS.items():
        channels = tap.channels or 7
        assert out[name].shape[1] == channels, name
    torch.testing.assert_close(out["logits"], ref)
    torch.testing.assert_close(out["pool"], m.forward_head(m.forward_features(x), pre_logits=True))
    with pytest.raises(ValueError, match="unknown tap"):
        m.forward_intermediates(x, ["Mixed_9z"])


def test_forward_intermediates_stops_early():
    m = inception.inception_v3(num_classes=7, aux_logits=False).eval()
    calls = []
    m.Mixed_7a.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        m.forward_intermediates(torch.randn(1, 3, 75, 75), ["Mixed_5d"])
    assert calls == []


def test_reset_classifier():
    m = inception.inception_v3(num_classes=1000, aux_logits=True)
    m.reset_classifier(5)
    assert m.fc.out_features == 5 and m.AuxLogits.fc.out_features == 5
    assert m.config["num_classes"] == 5 and m.num_classes == 5
    small = mini.inception_mini()
    small.reset_classifier(3)
    assert small.get_classifier().out_features == 3


def test_fresh_head_starts_at_chance_level_loss():
    torch.manual_seed(0)
    m = inception.inception_v3(num_classes=10, aux_logits=False).train()
    x = torch.randn(8, 3, 75, 75)
    loss = F.cross_entropy(m(x), torch.arange(8) % 10)
    assert abs(loss.item() - math.log(10)) < 0.05


def test_init_is_truncated_normal():
    m = inception.inception_v3(num_classes=10, aux_logits=True)
    w = m.Mixed_6b.branch7x7_2.conv.weight
    assert w.abs().max() <= 0.2 + 1e-6
    assert 0.05 < w.std().item() < 0.1   # a normal truncated at 2 sigma has std 0.88 sigma
    assert m.AuxLogits.fc.weight.abs().max() <= 0.002 + 1e-9
    bn = m.Mixed_5b.branch1x1.bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and bn.eps == 0.001


def test_variants_are_parameters():
    std = inception.inception_v3(num_classes=10, aux_logits=False).eval()
    tf = inception.inception_v3(num_classes=10, aux_logits=False, count_include_pad=False,
                                last_pool="max").eval()
    tf.load_state_dict(std.state_dict())
    assert tf.Mixed_5b.count_include_pad is False and tf.Mixed_7c.max_pool is True
    assert tf.Mixed_7b.max_pool is False
    x = torch.randn(1, 3, 107, 107)
    with torch.no_grad():
        a, b = std.forward_features(x), tf.forward_features(x)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="last_pool"):
        inception.inception_v3(last_pool="min")


def test_single_channel_model():
    m = inception.inception_v3(num_classes=10, aux_logits=False, in_chans=1).eval()
    assert m.Conv2d_1a_3x3.conv.weight.shape == (32, 1, 3, 3)
    with torch.no_grad():
        assert m(torch.randn(2, 1, 75, 75)).shape == (2, 10)


def test_torchscript_and_eval_contract():
    m = inception.inception_v3(num_classes=10, aux_logits=True).eval()
    scripted = torch.jit.script(m)
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), m(x))


def test_build_model_registry():
    assert isinstance(builder.build_model("inception_mini", num_classes=3), mini.InceptionMini)
    assert builder.build_model("inception_v3", num_classes=3, aux_logits=False).config["aux_logits"] is False
    with pytest.raises(ValueError, match="known: inception_v3, inception_mini"):
        builder.build_model("resnet50")
    with pytest.raises(ValueError, match="does not take"):
        builder.build_model("inception_mini", last_pool="max")


# The seed network ------------------------------------------------------------------------------------

def test_seed_copy_matches_document():
    if not SEED_DOC.exists():
        pytest.skip("the source document is not beside this checkout")
    doc = SEED_DOC.read_text()
    copy = (Path(__file__).parent / "seed_printed.py").read_text()
    code = "\n".join(line for line in copy.splitlines() if not line.startswith("# "))
    squash = lambda s: re.sub(r"\s+", " ", s).strip()
    assert squash(code) in squash(doc)


def test_seed_network_parity():
    import seed_printed

    torch.manual_seed(0)
    printed = seed_printed.InceptionV3(num_classes=1000).eval()
    ours = mini.inception_mini(num_classes=1000).eval()
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in printed.named_modules()]
    ours.load_state_dict(printed.state_dict(), strict=True)
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), printed(x), rtol=0, atol=0)
        torch.testing.assert_close(ours(torch.randn(1, 3, 27, 40)).shape, torch.Size([1, 1000]))
    with pytest.raises(ValueError, match="at least 27 px"):
        ours(torch.randn(1, 3, 26, 26))


def test_torch_compile_keeps_the_contract():
    # The "eager" backend traces with dynamo (where a changing return type would break) without the
    # 30-45 s inductor compile that a CPU suite cannot afford.
    m = inception.inception_v3(num_classes=10, aux_logits=True).train()
    m.dropout.p = 0.0
    compiled = torch.compile(m, backend="eager")
    x = torch.randn(2, 3, 75, 75)
    out = compiled(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    torch.testing.assert_close(out, m(x))
