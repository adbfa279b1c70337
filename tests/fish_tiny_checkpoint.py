"""Write a tiny random-weight Fish Speech checkpoint in the OpenAudio S1 mini layout (test fixture).

    python tests/fish_tiny_checkpoint.py OUT_DIR          # run with the fish venv's python

Files (the layout of fishaudio/openaudio-s1-mini, what FishTTS and fish-speech's loaders read)::

    config.json           DualARModelArgs (model_type dual_ar), shrunk: 2 slow + 1 fast layer, dim 64
    tokenizer.tiktoken    byte-level BPE ranks (the 256 single bytes: every text encodes)
    special_tokens.json   fish_speech.tokenizer.ALL_SPECIAL_TOKENS with their ids (as save_pretrained writes)
    model.pth             state_dict of fish_speech's own DualARTransformer built from config.json
    codec.pth             state_dict of fish_speech's own modded DAC, from a hydra config (default modded_dac_vq_tiny)

Everything is built with fish-speech's classes, so the real loaders (DualARTransformer.from_pretrained,
fish_speech.models.dac.inference.load_model) load it unchanged. The text-to-semantic model is shrunk
through its config.json (its loader reads the architecture from there). The codec loader takes only a
hydra config *name* (fish-speech's --decoder-config-name), so the codec is shrunk through a config of
its own: tests/fixtures/fish/modded_dac_vq_tiny.yaml (same classes, rate, hop and codebooks as
modded_dac_vq; scripts/fish_env.sh puts it next to the real one), and the test runs the adapter with
TTS_FISH_CODEC_CONFIG=modded_dac_vq_tiny. The full-size codec with random weights would also load
(1.9 GB; ~1 min to load and ~13 s per 10 frames on 2 CPU cores), too slow for CI. Weights are random:
the audio is noise of the right shape and rate, which is what the integration test checks.

Deterministic (seeded); writes atomically into OUT_DIR (a temp folder renamed at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# S1 mini's real values where they define the interface (codebooks, semantic vocabulary, codec
# codebook size); the model's width and depth are shrunk.
TINY_CONFIG = {
    "model_type": "dual_ar",
    "dim": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_local_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "n_fast_layer": 1,
    "fast_dim": 64,
    "fast_n_head": 4,
    "fast_n_local_heads": 2,
    "fast_head_dim": 16,
    "fast_intermediate_size": 128,
    "codebook_size": 4096,      # semantic codebook of the modded DAC (first codebook)
    "num_codebooks": 10,        # 1 semantic + 9 residual codebooks of the modded DAC
    "max_seq_len": 2560,        # the engine needs prompt + 2048 below it
    "rope_base": 10000,
    "norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_qkv_bias": False,
    "attention_qk_norm": False,
    "dropout": 0.0,
    "use_gradient_checkpointing": False,
}
SEED = 1234


def write(out: str | Path, codec_config: str = "modded_dac_vq_tiny") -> Path:
    import torch
    from fish_speech.models.text2semantic.llama import BaseModelArgs, DualARTransformer
    from fish_speech.tokenizer import ALL_SPECIAL_TOKENS, FishTokenizer

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        torch.manual_seed(SEED)
        # tokenizer: 256 byte ranks + the special tokens (ids follow the ranks, as FishTokenizer assigns them)
        import base64

        with open(tmp / "tokenizer.tiktoken", "w", encoding="utf-8") as f:
            for i in range(256):
                f.write(f"{base64.b64encode(bytes([i])).decode()} {i}\n")
        special = {tok: 256 + i for i, tok in enumerate(ALL_SPECIAL_TOKENS)}
        (tmp / "special_tokens.json").write_text(json.dumps(special, indent=2, ensure_ascii=False), encoding="utf-8")
        cfg = dict(TINY_CONFIG, vocab_size=256 + len(ALL_SPECIAL_TOKENS))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")

        # the text-to-semantic model: fish-speech's own class from the config just written
        tokenizer = FishTokenizer.from_pretrained(str(tmp))
        args = BaseModelArgs.from_pretrained(str(tmp))
        model = DualARTransformer(args, tokenizer=tokenizer)
        torch.save(model.state_dict(), tmp / "model.pth")

        # the codec: fish-speech's hydra config, instantiated as load_model does
        import fish_speech
        import hydra
        from hydra import compose, initialize_config_dir

        configs = Path(list(fish_speech.__path__)[0]) / "configs"  # a namespace package (no __init__)
        hydra.core.global_hydra.GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(configs)):
            codec_cfg = compose(config_name=codec_config)
        codec = hydra.utils.instantiate(codec_cfg)
        torch.save({k: v.detach().clone() for k, v in codec.state_dict().items()}, tmp / "codec.pth")
        hydra.core.global_hydra.GlobalHydra.instance().clear()

        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/fish_tiny_checkpoint.py OUT_DIR")
    print(write(sys.argv[1]))
