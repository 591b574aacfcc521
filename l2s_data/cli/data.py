"""`l2s data ...`: make synthetic sets, import POPE / MM-SafetyBench, list behaviors and presets.

    l2s data make-synthetic synthetic-safety data/ss --n 130 --seed 0
    l2s data make-synthetic shapes-pope data/shapes --n 100 --seed 0
    l2s data import pope --questions POPE_DIR --images COCO_VAL2014_DIR data/pope
    l2s data import mmsafetybench MMSB/data data/mmsb --question-field "Rephrased Question" --image-kind SD_TYPO
    l2s data info data/pope
    l2s data behaviors [NAME]
    l2s data presets [NAME]
"""

from __future__ import annotations

import json
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from l2s_data.cli._common import cells, console, fail, say
from l2s_data.errors import L2SError
from l2s_data.store.contract import canonical_json

app = typer.Typer(
    help="Data sets (samples + memberships as Parquet), behaviors and presets.",
    no_args_is_help=True,
)
import_app = typer.Typer(
    help="Import a real data set into a data set directory (samples.parquet, memberships.parquet).",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")



class SyntheticName(str, Enum):
    shapes_pope = "shapes-pope"
    synthetic_safety = "synthetic-safety"


class ImageKind(str, Enum):
    SD = "SD"
    TYPO = "TYPO"
    SD_TYPO = "SD_TYPO"


class MMSBSplit(str, Enum):
    reference = "reference"
    by_image = "by_image"


_fail = fail


def print_summary(tables, out: Path | None = None, *, max_errors: int = 10) -> None:
    """Counts per (dataset, subset, split, label) and the first quarantined errors."""
    m = tables.memberships
    counts = Counter(zip(*(m.column(c).to_pylist() for c in ("dataset", "subset", "split", "label"))))
    title = f"{len(tables)} samples, {m.num_rows} memberships" + (f" -> {out}" if out else "")
    t = Table(title=title, title_justify="left")
    for col in ("dataset", "subset", "split", "label", "memberships"):
        t.add_column(col, justify="right" if col == "memberships" else "left")
    for (d, s, sp, lab), n in sorted(counts.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        t.add_row(*cells(d, s, sp, str(lab), n))
    console.print(t)
    cats = Counter(m.column("category").to_pylist())
    if len(cats) > 1:
        say("categories: " + ", ".join(f"{c} ({n})" for c, n in sorted(cats.items())))
    n_err = 0 if tables.errors is None else tables.errors.num_rows
    if n_err:
        e = Table(title=Text.assemble((f"{n_err} item(s) quarantined", "yellow"), " (errors.parquet)"), title_justify="left")
        for col in ("source", "item", "reason"):
            e.add_column(col, overflow="fold")
        for row in tables.errors.slice(0, max_errors).to_pylist():
            e.add_row(*cells(Path(row["source"]).name, row["item"], row["reason"]))
        console.print(e)
        if n_err > max_errors:
            say(f"... and {n_err - max_errors} more")
    else:
        console.print("[green]no errors[/]")


@app.command("make-synthetic")
def make_synthetic_cmd(
    name: SyntheticName = typer.Argument(..., help="Which generator: shapes-pope or synthetic-safety."),
    out_dir: Path = typer.Argument(..., help="Directory to write images/ and the Parquet tables into."),
    n: int = typer.Option(100, "--n", min=1, help="Number of images (shapes-pope asks up to 6 questions about each)."),
    seed: int = typer.Option(0, "--seed", help="Same name, n and seed give the same bytes and sample ids."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=1.0, help="Share of images in the test split."),
) -> None:
    """Generate a deterministic synthetic data set (a stand-in where the real images are absent)."""
    from l2s_data.datasets import make_synthetic

    try:
        with console.status(f"generating {name.value} (n={n}, seed={seed})"):
            tables = make_synthetic(name.value, out_dir, n=n, seed=seed, test_fraction=test_fraction)
    except L2SError as e:
        _fail(e)
    print_summary(tables, out_dir)


@import_app.command("pope")
def import_pope(
    out_dir: Path = typer.Argument(..., help="Directory to write the data set into."),
    questions: Path = typer.Option(..., "--questions", help="Folder with coco_pope_{random,popular,adversarial}.json (or one file)."),
    images: Path = typer.Option(..., "--images", help="Folder holding the COCO val2014 images the questions name."),
    subsets: str = typer.Option("random,popular,adversarial", "--subsets", help="Comma-separated POPE subsets to read."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=1.0, help="Share of images in the test split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the by-image split."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad line or image instead of quarantining it."),
    copy_images: bool = typer.Option(False, "--copy-images", help="Copy the images into OUT_DIR/images/ (self-contained)."),
) -> None:
    """Import POPE's official line-JSON question files; images are resolved in --images.

    Splits are by image: no image is in both train and test.
    """
    from l2s_data.datasets import load_pope, write_dataset

    try:
        with console.status("reading POPE"):
            tables = load_pope(questions, images, subsets=[s.strip() for s in subsets.split(",") if s.strip()],
                               test_fraction=test_fraction, seed=seed, strict=strict)
            write_dataset(tables, out_dir, copy_images=copy_images)
    except L2SError as e:
        _fail(e)
    print_summary(tables, out_dir)


@import_app.command("mmsafetybench")
def import_mmsb(
    root: Path = typer.Argument(..., help="MM-SafetyBench data folder (holds processed_questions/ and imgs/)."),
    out_dir: Path = typer.Argument(..., help="Directory to write the data set into."),
    question_field: str = typer.Option("Rephrased Question", "--question-field", help="Which field of each question record is the query."),
    image_kind: ImageKind = typer.Option(ImageKind.SD_TYPO, "--image-kind", help="Image folder: SD, TYPO or SD_TYPO."),
    split: MMSBSplit = typer.Option(MMSBSplit.reference, "--split", help="reference: shuffle items as the paper's code (numpy seed 21, 80/20); by_image: whole images."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=1.0, help="Share of items (or images) in the test split."),
    seed: int = typer.Option(21, "--seed", help="Split seed (21 is the reference's)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first problem instead of quarantining it."),
    copy_images: bool = typer.Option(False, "--copy-images", help="Copy the images into OUT_DIR/images/ (self-contained)."),
) -> None:
    """Import MM-SafetyBench (13 scenarios); labels: refuse (01-09, 13), defer (10-12)."""
    from l2s_data.datasets import load_mmsafetybench, write_dataset

    try:
        with console.status("reading MM-SafetyBench"):
            tables = load_mmsafetybench(root, question_field=question_field, image_kind=image_kind.value,
                                        split=split.value, test_fraction=test_fraction, seed=seed, strict=strict)
            write_dataset(tables, out_dir, copy_images=copy_images)
    except L2SError as e:
        _fail(e)
    print_summary(tables, out_dir)


@app.command("info")
def info_cmd(path: Path = typer.Argument(..., help="A data set directory.")) -> None:
    """Summarise a data set directory: counts per dataset/subset/split/label, quarantined errors."""
    from l2s_data.datasets import read_dataset

    try:
        tables = read_dataset(path)
    except L2SError as e:
        _fail(e)
    print_summary(tables, path)
    if tables.info:
        console.print_json(json.dumps(tables.info))


@app.command("behaviors")
def behaviors_cmd(
    name: Optional[str] = typer.Argument(None, help="A shipped behavior name or a TOML file: show its pairs."),
    as_json: bool = typer.Option(False, "--json", help="Print the behavior's canonical spec as JSON."),
) -> None:
    """List the shipped behaviors, or show one behavior's pairs per category."""
    from l2s_data.behaviors import list_behaviors, load_behavior

    try:
        if name is None:
            t = Table(title="behaviors (l2s data behaviors NAME to show one)", title_justify="left")
            t.add_column("name")
            t.add_column("categories", justify="right")
            t.add_column("description", overflow="fold")
            for n in list_behaviors():
                b = load_behavior(n)
                t.add_row(*cells(n, len(b.categories), b.description))
            console.print(t)
            return
        b = load_behavior(name)
    except L2SError as e:
        _fail(e)
    if as_json:
        console.print_json(canonical_json(b.spec(), what=f"behavior {b.name!r}"))
        return
    t = Table(title=Text(f"{b.name}: {b.description}"), title_justify="left", show_lines=True)
    for col in ("category", "label", "suffix S_c", "positive P_c", "negative N_c"):
        t.add_column(col, overflow="fold")
    groups: dict[tuple, list[str]] = {}  # one row per distinct (label, pair), categories joined
    for r in b.rules:
        groups.setdefault((r.label, r.pair), []).append(r.category)
    for (label, pair), cats in groups.items():
        t.add_row(*cells("\n".join(cats), label, repr(pair.suffix), pair.positive, pair.negative))
    console.print(t)


def _tree(node: Tree, data: dict) -> None:
    for k, v in data.items():
        if isinstance(v, dict) and v:
            _tree(node.add(Text(str(k), style="bold")), v)
        else:
            node.add(Text(f"{k} = {json.dumps(v)}"))


@app.command("presets")
def presets_cmd(
    name: Optional[str] = typer.Argument(None, help="A shipped preset name or a TOML file: show every field."),
    as_json: bool = typer.Option(False, "--json", help="Print the preset's spec as JSON."),
) -> None:
    """List the shipped presets, or show every field of one (reference protocol or clean defaults)."""
    from l2s_data.behaviors import list_presets, load_preset

    try:
        if name is None:
            t = Table(title="presets (l2s data presets NAME to show one)", title_justify="left")
            for col in ("name", "family", "reference", "description"):
                t.add_column(col, overflow="fold")
            for n in list_presets():
                p = load_preset(n)
                t.add_row(*cells(n, p.family, "yes" if p.reference else "no", p.description))
            console.print(t)
            return
        p = load_preset(name)
    except L2SError as e:
        _fail(e)
    if as_json:
        console.print_json(json.dumps(p.spec()))
        return
    root = Tree(Text.assemble((p.name, "bold"), f" ({p.family}): {p.description}"))
    _tree(root, {k: v for k, v in p.spec().items() if k not in ("name", "description")})
    console.print(root)
