"""The minimise run's wiring: search units over a bundle's components, settings, and the search
driven through a stand-in oracle with a journal (resume asks only what the journal lacks).

The end-to-end run on a real model (the model organism) is in tests/test_minimise_organism.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ddalign.architectures import ArchitectureMap, Component
from ddalign.errors import DdalignError
from ddalign.run.execute import RunState, run_search
from ddalign.run.plan import RunPaths
from ddalign.run.units import SearchUnits
from ddalign.search import Verdict, is_one_minimal
from ddalign.settings import Search, Settings
from tests.families import make_checkpoint, read_config, read_shapes


@pytest.fixture(scope="module")
def llama_arch(tmp_path_factory) -> ArchitectureMap:
    path = make_checkpoint("llama", tmp_path_factory.mktemp("llama") / "m", layers=4)
    return ArchitectureMap.from_config(read_config(path), read_shapes(path))


def bundle_components(arch: ArchitectureMap, scope: str) -> list[str]:
    return [str(c) for c in arch.components(scope)]


def test_units_layers_modules_blocks(llama_arch):
    comps = bundle_components(llama_arch, "mlp.gate,mlp.up,attn.o")
    units = SearchUnits(comps, llama_arch, block_size=16)
    assert units.top(["layer", "module", "block"]) == ["L0", "L1", "L2", "L3"]
    assert units.children("L2", "module") == ["L2.attn.o", "L2.mlp.gate", "L2.mlp.up"]
    blocks = units.children("L2.mlp.gate", "block")
    assert blocks == [f"L2.mlp.gate[{a}:{a + 16}]" for a in range(0, 64, 16)]
    # a layer stands for all its bundle components; blocks and components stand for themselves
    assert units.concrete(["L1", "L2.mlp.gate[0:16]"]) == ["L1.attn.o", "L1.mlp.gate", "L1.mlp.up", "L2.mlp.gate[0:16]"]
    assert units.top(["module"]) == sorted(comps, key=lambda c: (Component.parse(c).layer, c))
    # parameters of items equal the architecture's count of the concrete components
    assert units.params(["L1"]) == sum(llama_arch.param_count(c) for c in ("L1.attn.o", "L1.mlp.gate", "L1.mlp.up"))


def test_units_scope_all_keeps_layerless_components(llama_arch):
    comps = bundle_components(llama_arch, "all")
    units = SearchUnits(comps, llama_arch)
    top = units.top(["layer", "module", "block"])
    assert {"embed", "head", "norm.final"} <= set(top)
    assert units.children("head", "module") == ["head"]
    assert sorted(units.concrete(top)) == sorted(comps)


def test_units_split_the_ffn_into_its_modules(llama_arch):
    """Scope all stores the FFN as one unit (L2.mlp); the module level tells gate, up and down apart."""
    comps = bundle_components(llama_arch, "all")
    units = SearchUnits(comps, llama_arch, block_size=16)
    modules = units.children("L2", "module")
    assert {"L2.mlp.gate", "L2.mlp.up", "L2.mlp.down"} <= set(modules) and "L2.mlp" not in modules
    assert units.params(modules) == units.params(["L2"])
    assert units.children("L2.mlp.gate", "block")[0] == "L2.mlp.gate[0:16]"
    assert "L0.mlp.gate" in units.top(["module"])
    weight = units.prior({"L2.mlp": 3.0})
    assert weight("L2.mlp.gate") == pytest.approx(3.0 / 3**0.5)  # a third of the FFN's params
    assert weight("L2.mlp.gate[0:16]") == pytest.approx(weight("L2.mlp.gate") * (16 / 64) ** 0.5)


def test_prior_spreads_norms_over_levels(llama_arch):
    comps = ["L0.mlp.gate", "L0.mlp.up", "L1.mlp.gate"]
    units = SearchUnits(comps, llama_arch, block_size=16)
    weight = units.prior({"L0.mlp.gate": 3.0, "L0.mlp.up": 4.0, "L1.mlp.gate": 1.0})
    assert weight("L0") == pytest.approx(5.0)
    assert weight("L1.mlp.gate") == pytest.approx(1.0)
    # a quarter of the rows carries half the norm when the norm is spread evenly over rows
    assert weight("L0.mlp.gate[0:16]") == pytest.approx(1.5)


def test_settings_from_config_and_errors():
    s = Settings.from_dict(
        {
            "search": {"granularity": "module,block", "block_size": 32},
            "oracle": {"target_dsr": 0.8, "max_ppl_increase": False},
        }
    )
    assert s.search.granularity == ("module", "block") and s.search.block_size == 32
    assert s.oracle.target_dsr == 0.8 and s.oracle.target_fraction is None
    assert s.oracle.bound("max_ppl_increase") is None  # false switches a guard off
    config = s.oracle_config()
    assert config.target_dsr == 0.8 and "perplexity" not in config.guards
    assert config.guards == ["over_refusal", "benign_accuracy"]  # the others keep their defaults
    with pytest.raises(DdalignError, match="search.algorithm"):
        Settings.from_dict({"search": {"algorithm": "bisect"}})
    with pytest.raises(DdalignError, match="coarse to fine"):
        Settings.from_dict({"search": {"granularity": "block,layer"}})
    with pytest.raises(DdalignError, match="search.granularity"):
        Settings.from_dict({"search": {"granularity": "layer,neuron"}})


def test_run_paths(tmp_path):
    paths = RunPaths.for_output(tmp_path / "p.safetensors")
    assert paths.journal == tmp_path / "p.run" / "journal.jsonl"
    with pytest.raises(DdalignError, match="safetensors"):
        RunPaths.for_output(tmp_path / "p.bin")


# --- the search through a stand-in oracle -----------------------------------------------------


@dataclass
class Record:
    verdict: Verdict
    metrics: dict
    cost: dict
    cached: bool = False


class GroundTruthOracle:
    """PASS iff every needed unit is covered by some candidate component (a monotone oracle)."""

    def __init__(self, arch: ArchitectureMap, needed: list[str]):
        self.arch, self.needed = arch, needed
        self.records: list[Record] = []
        self.asked: list[frozenset] = []

    def test_record(self, candidate):
        key = frozenset(candidate)
        assert key not in self.asked, f"tested twice: {sorted(key)}"
        self.asked.append(key)
        ok = all(any(self.arch.covers(c, n) for c in key) for n in self.needed)
        record = Record(
            Verdict.PASS if ok else Verdict.FAIL, {"dsr": {"k": int(ok)}, "test": len(self.asked)}, {"prompts": 1}
        )
        self.records.append(record)
        return record


class ListJournal:
    def __init__(self):
        self.tests: list[dict] = []

    def append_test(self, **line):
        self.tests.append(line)


class StubBundle:
    def __init__(self, comps):
        self.comps = comps

    def prior(self):
        return {c: 1.0 + i for i, c in enumerate(self.comps)}


def _search(settings, units, needed, cache, journal):
    oracle = GroundTruthOracle(units.arch, needed)
    result = run_search(settings, units, oracle, StubBundle(units.components), cache, journal, RunState(), None)
    return result, oracle


@pytest.mark.parametrize("algorithm", ["hierarchical", "probdd", "ddmin"])
def test_search_finds_needed_blocks_and_resumes_without_repeating(llama_arch, algorithm):
    comps = bundle_components(llama_arch, "all")
    units = SearchUnits(comps, llama_arch, block_size=16)
    needed = ["L2.mlp.gate[16:32]", "L3.attn.o[0:8]", "head"]
    settings = Search(algorithm=algorithm)
    journal = ListJournal()
    result, oracle = _search(settings, units, needed, {}, journal)
    kept = units.concrete(result.minimal)
    # the result passes and is 1-minimal among the last level's units
    passes = lambda items: all(any(llama_arch.covers(c, n) for c in units.concrete(items)) for n in needed)
    assert passes(result.minimal)
    assert is_one_minimal(result.minimal, passes)
    # scope all stores the whole FFN as L2.mlp; the module level splits it, so the gate block alone is kept
    assert {"L2.mlp.gate[16:32]", "L3.attn.o[0:16]", "head"} == set(kept)
    assert units.params(result.minimal) < sum(units.params([n]) for n in ("L2.mlp", "L3.attn.o", "head"))
    # one journal line per real oracle call, subsets named by concrete components
    assert len(journal.tests) == len(oracle.asked) == result.tests
    assert all(line["subset"] == sorted(line["subset"]) for line in journal.tests)
    # each line holds the record of its own test (handed through the search, not a shared slot)
    assert [line["metrics"] for line in journal.tests] == [r.metrics for r in oracle.records]
    assert [line["verdict"] for line in journal.tests] == [r.verdict.value for r in oracle.records]

    # resume from a journal cut after every k-th line: the replay asks only the missing tests
    for cut in (0, len(journal.tests) // 2, len(journal.tests)):
        cache = {frozenset(line["subset"]): line["verdict"] for line in journal.tests[:cut]}
        again, oracle2 = _search(settings, units, needed, cache, ListJournal())
        assert again.minimal == result.minimal
        assert len(oracle2.asked) == len(journal.tests) - cut
        assert not set(oracle2.asked) & set(cache)


def test_run_summary_keeps_the_summary_json_format(tmp_path):
    from ddalign.run.summary import RunSummary

    # the keys summary.json has (read by the report, the demo, the tables, the model card and the benchmarks)
    keys = [
        "bundle",
        "target",
        "mode",
        "models",
        "algorithm",
        "granularity",
        "oracle",
        "architecture",
        "total_params",
        "metrics",
        "kept",
        "kept_params",
        "param_share",
        "full_params",
        "full_components",
        "tests",
        "answered_without_test",
        "cost",
        "levels",
        "stopped",
        "data",
        "heldout_check",
        "patch",
        "extents",
    ]
    summary = RunSummary(
        kept=["L1.mlp.gate"], kept_params=10, total_params=100, full_params=40, tests=3, run_dir=tmp_path
    )
    assert list(summary.to_dict()) == keys
    assert summary.full_share == 0.4 and summary.whole == "full transplant"
    assert RunSummary(mode="add").whole == "full additive bundle"
    (tmp_path / "summary.json").write_text(__import__("json").dumps({**summary.to_dict(), "later": 1}))
    assert RunSummary.load(tmp_path) == summary  # unknown keys of a later version ignored
    with pytest.raises(DdalignError, match="no summary.json"):
        RunSummary.load(tmp_path / "nowhere")


def test_a_full_bundle_that_fails_a_guard_is_reported_with_its_figures():
    """The error names each failing guard with what it measured and what it needed."""
    from types import SimpleNamespace

    from ddalign.run.execute import search_error_message
    from ddalign.search.core import SearchError

    guards = {
        "dsr": {"k": 29, "need": 27, "passed": True},
        "perplexity": {"value": 254.31, "bound": 272.65, "passed": True},
        "over_refusal": {"k": 12, "allowed_refusals": 9, "passed": False},
        "benign_accuracy": {"k": 21, "need": 28, "passed": False},
    }
    cal = SimpleNamespace(
        empty={"dsr": {"value": 0.0}}, full={"dsr": {"value": 0.453}, "guards": guards}, target_dsr=0.408, need=27, n=64
    )
    config = SimpleNamespace(target_confidence=None, accuracy_reference="target", over_refusal_reference="target")
    oracle = SimpleNamespace(calibration=cal, config=config)
    text = search_error_message(SearchError("never", "never-safe"), oracle)
    assert "over_refusal: 12 refusals, at most 9 allowed; benign_accuracy: 21 correct answers, needed 28" in text
    assert "perplexity" not in text and "27 of 64 refusals" in text and "full transplant 0.453" in text
    # the way out it names: count the guards from what the whole bundle keeps
    assert "count them from the full transplant's (--accuracy-reference full, --over-refusal-reference full)" in text
    oracle.config.over_refusal_reference = "full"
    assert "(--accuracy-reference full)" in search_error_message(SearchError("", "never-safe"), oracle)
    oracle.patch = SimpleNamespace(mode="add")
    assert "even the full additive bundle does not pass" in search_error_message(SearchError("", "never-safe"), oracle)
