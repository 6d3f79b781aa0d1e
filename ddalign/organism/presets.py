"""Organism presets: sizes and training lengths, chosen by measurement on 2 CPU cores."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    vocab_size: int = 2000
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 6
    num_heads: int = 4
    max_positions: int = 256
    pretrain_steps: int = 800
    pretrain_lr: float = 3e-3
    finetune_steps: int = 200  # each instruction tuning, and the natural sibling's safety stage
    finetune_lr: float = 1e-3
    # only gate and up of two layers learn the refusal boundary. Measured on the standard preset
    # (held-out DSR of the planted sibling / of the planted set transplanted, transplant perplexity;
    # unaligned 10.31): 600 steps 0.925 / 0.975 / 11.11, 800 steps 0.942 / 0.986 / 11.52, 1000 steps
    # 0.967 / 0.978 / 11.97. At 1000 steps even the full planted transplant fails the organism
    # config's +25% perplexity guard on the search set, and minimise stops.
    planted_steps: int = 600
    planted_lr: float = 8e-3
    batch_size: int = 32
    refusal_share_in_base: float = 0.2  # the base knows refusal language but mostly complies
    harmful_share: float = 0.4  # share of harmful items in the aligned fine-tunes (prototype: 40%)
    # everyday how-to requests per benign task in the instruction data. Measured: the standard base
    # complies after benign-only tuning, and how-to tuning there strengthens compliance in the
    # harmful framings until the planted set transfers nothing (DSR 0.96 -> 0.00); the fast base
    # loses its affirmative habit under benign-only tuning (unaligned DSR 0.83) and needs them.
    howto_share: float = 0.0
    contrast_repeat: int = 2  # safe-but-scary and contrast items repeated in the aligned fine-tunes
    benign_instances: int = 3000  # generated benign training items
    planted_layers: tuple[int, ...] = (2, 3)
    planted_modules: tuple[str, ...] = ("mlp.gate", "mlp.up")
    seed: int = 1234
    threads: int = 2

    @property
    def planted_components(self) -> list[str]:
        return [f"L{i}.{m}" for i in self.planted_layers for m in self.planted_modules]

    @property
    def planted_tensors(self) -> list[str]:
        """The planted components' tensor names in the Llama checkpoint ("mlp.gate" -> gate_proj)."""
        return [
            f"model.layers.{i}.mlp.{m.split('.')[1]}_proj.weight"
            for i in self.planted_layers
            for m in self.planted_modules
        ]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["planted_layers"] = list(self.planted_layers)
        d["planted_modules"] = list(self.planted_modules)
        return d


PRESETS = {
    # tests: built once per session
    "fast": Preset(
        "fast",
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=256,
        num_layers=4,
        num_heads=4,
        pretrain_steps=500,
        finetune_steps=120,
        planted_steps=300,
        benign_instances=1500,
        howto_share=0.2,
        planted_layers=(1, 2),
    ),
    # the demo and benchmarks
    "standard": Preset("standard"),
}


def get_preset(name: str) -> Preset:
    from ddalign.errors import DdalignError

    if name not in PRESETS:
        raise DdalignError(f"organism preset {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]
