"""The README's main job, end to end at toy size: base -> PI + S2-Attn + LoRA+ -> perplexity before / after."""

import json

from minilongllora import Llama, LlamaConfig, to_hf
from minilongllora.longlora import run_context_extension


def test_context_extension_end_to_end(tmp_path, capsys):
    base = tmp_path / "base"
    to_hf(Llama(LlamaConfig.from_preset("tiny", n_layers=1, dim=64, n_heads=4, ffn_dim=128)), base)
    summary = run_context_extension("extend-tiny-4x", base=str(base), out_dir=str(tmp_path / "run"), steps=3,
                                    batch_size=1, eval_every=0, save_every=3, max_windows=2)
    out = capsys.readouterr().out
    assert summary["lengths"] == [256, 512, 1024]
    assert list(summary["perplexity"]) == ["base", "base + PI x4, no fine-tuning", "LongLoRA (S2-Attn + LoRA+ + PI)"]
    assert all(len(row) == 3 for row in summary["perplexity"].values())
    assert "LongLoRA (S2-Attn + LoRA+ + PI)" in out and "1024" in out
    for name in ("extension.png", "position_loss.png", "extension.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "run" / "extension.json").read_text())
    assert saved["config"]["attention"] == "s2" and saved["config"]["method"] == "lora_plus"
    final = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert final["rope_parameters"]["rope_type"] == "linear" and final["rope_parameters"]["factor"] == 4.0
