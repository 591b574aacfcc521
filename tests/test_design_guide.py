"""The repository carries the design guide its code and guides cite, with every cited section."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"DESIGN(?:\.md)?(?:'s)?(?: section)? (\d+)(?:\.(\d+))?")


def _sources() -> list[Path]:
    out = []
    for top in ("l2s_data", "tests", "benchmarks", "cluster", "jobs", "schemas"):
        for p in (ROOT / top).rglob("*"):
            if p.suffix in (".py", ".md", ".toml", ".yaml", ".sql") and p.is_file():
                out.append(p)
    return out + [ROOT / "README.md"]


def _sections(text: str) -> dict[int, str]:
    parts = re.split(r"^## (\d+)\. .*$", text, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_design_citation_names_a_section_of_the_repositorys_design_guide():
    guide = ROOT / "DESIGN.md"
    assert guide.is_file(), "DESIGN.md is cited by the code but missing from the repository"
    sections = _sections(guide.read_text("utf-8"))
    assert set(sections) == {1, 2, 3, 4, 5, 6, 7}
    cited = 0
    for path in _sources():
        if path.name == "test_design_guide.py":
            continue
        for m in CITE.finditer(path.read_text("utf-8", errors="replace")):
            n, item = int(m.group(1)), m.group(2)
            cited += 1
            assert n in sections, f"{path.relative_to(ROOT)} cites {m.group(0)!r}: DESIGN.md has no section {n}"
            if item is not None:
                assert re.search(rf"^{item}\. \*\*", sections[n], flags=re.M), (
                    f"{path.relative_to(ROOT)} cites {m.group(0)!r}: section {n} has no item {item}")
    assert cited >= 20


def test_the_guide_defines_the_reference_protocol_and_the_selection_rules_the_code_follows():
    text = (ROOT / "DESIGN.md").read_text("utf-8")
    for phrase in ("`sequence_last-1`", "2 acc / (1 + acc)", "np.arange(tau, 1.0, 0.02)", "last 1/12",
                   "MSE + L1 - 0.05 cos", "validate_on_test", "strict = true", "One scale per method"):
        assert phrase in text, phrase
