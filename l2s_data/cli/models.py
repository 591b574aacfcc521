"""`l2s models ...`: write tiny offline checkpoints, describe a checkpoint directory.

    l2s models make-tiny llava models/tiny-llava --seed 0 --hidden-size 64 --layers 4
    l2s models make-tiny qwen2-vl models/tiny-qwen2-vl
    l2s models train-tiny models/tiny-llava-trained --seed 0
    l2s models info models/tiny-llava
    l2s models info /models/llava-1.5-7b-hf --dtype bfloat16
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from l2s_data.cli._common import cells, console, fail, say
from l2s_data.errors import L2SError

app = typer.Typer(
    help="Model checkpoints: tiny offline ones for demos and tests, and what a directory holds.",
    no_args_is_help=True,
)


class Family(str, Enum):
    llava = "llava"
    qwen2_vl = "qwen2-vl"
    qwen2_5_vl = "qwen2.5-vl"


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


_fail = fail


@app.command("make-tiny")
def make_tiny_cmd(
    family: Family = typer.Argument(..., help="Model family: the real transformers class to instantiate."),
    out_dir: Path = typer.Argument(..., help="Directory to write (save_pretrained model + full processor)."),
    seed: int = typer.Option(0, help="Seed of the random weights (same seed, same checkpoint)."),
    hidden_size: int = typer.Option(64, help="Hidden size of the language model (a multiple of 8)."),
    layers: int = typer.Option(4, help="Number of decoder layers."),
) -> None:
    """Write a tiny random checkpoint of FAMILY with its processor (tokenizer, image processor,
    chat template), built offline. Reload it with `from_pretrained(OUT_DIR)`."""
    from l2s_data.models import make_tiny

    try:
        path = make_tiny(family.value, out_dir, seed=seed, hidden_size=hidden_size, layers=layers)
    except L2SError as e:
        _fail(e)
    say(f"wrote tiny {family.value} checkpoint to {path} "
        f"(hidden {hidden_size}, {layers} layers, seed {seed})")


@app.command("train-tiny")
def train_tiny_cmd(
    out_dir: Path = typer.Argument(..., help="Directory to write (the trained checkpoint and its model card)."),
    seed: int = typer.Option(0, help="Seed of the initial weights, the training data and the batches."),
    steps: int = typer.Option(0, help="Training steps (0: the default of the shipped checkpoint)."),
    card: bool = typer.Option(True, help="Evaluate on held-out data and write model_card.md / .json."),
) -> None:
    """Train the tiny LLaVA on the synthetic sets so that steering measurably works (on the CPU
    with one thread; the same seed gives the same weights where the float arithmetic is the same).
    Writes the checkpoint and a model card: data, seed, steps, losses, held-out behaviour,
    fingerprint."""
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from l2s_data.trained_tiny import TinyTrainConfig, train_tiny

    cfg = TinyTrainConfig(seed=seed)
    if steps:
        cfg = replace(cfg, steps=steps)
    try:
        with Progress(TextColumn("[bold]train-tiny"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                      TextColumn("loss {task.fields[loss]:.3f}"), console=console, transient=True) as bar:
            task = bar.add_task("train", total=cfg.steps, loss=float("nan"))
            result = train_tiny(out_dir, config=cfg, card=card,
                                progress=lambda k, n, loss: bar.update(task, completed=k, loss=loss))
    except L2SError as e:
        _fail(e)
    say(f"wrote the trained tiny LLaVA to {result.path} (seed {seed}, {cfg.steps} steps; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()) + ")")
    if card:
        say(f"model card: {result.path / 'model_card.md'}")


@app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., help="A checkpoint directory (tiny, or a real llava-hf / Qwen2-VL one)."),
    dtype: DType = typer.Option(DType.float32, help="Compute dtype to load with (part of the fingerprint)."),
    attn_implementation: str = typer.Option("eager", help="Attention implementation (part of the fingerprint)."),
    as_json: bool = typer.Option(False, "--json", help="Print the fingerprint spec as JSON instead of a table."),
) -> None:
    """Load PATH offline and print its family, layers, hidden size, context and fingerprint."""
    from l2s_data.models import load_adapter

    try:
        adapter = load_adapter(path, dtype=dtype.value, attn_implementation=attn_implementation)
        spec = adapter.fingerprint_spec()
        fingerprint = adapter.fingerprint()
    except L2SError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps({"family": adapter.family, "num_layers": adapter.num_layers,
                               "hidden_size": adapter.hidden_size, "max_context": adapter.max_context,
                               "fingerprint": fingerprint, "spec": spec}, indent=2, sort_keys=True))
        return
    table = Table(title=str(path), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in [
        ("family", adapter.family),
        ("model class", spec["model_class"]),
        ("processor", type(adapter.processor).__name__),
        ("layers", str(adapter.num_layers)),
        ("hidden size", str(adapter.hidden_size)),
        ("max context", str(adapter.max_context)),
        ("dtype", spec["dtype"]),
        ("attention", spec["attn_implementation"]),
        ("weights digest", f"{spec['weights']['digest'][:16]} ({spec['weights']['method']})"),
        ("fingerprint", fingerprint),
    ]:
        table.add_row(*cells(field, value))
    console.print(table)
