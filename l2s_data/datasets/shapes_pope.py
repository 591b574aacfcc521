"""shapes-POPE: rendered scenes of known objects with POPE-style yes/no questions.

A scene is a light background with 2-4 objects drawn from a fixed vocabulary of coloured
shapes ("red circle", "blue square", ...), one per quadrant. Scenes are drawn from a few
"themes" so that objects co-occur the way COCO objects do, and some objects are more
frequent than others. Per image, as POPE builds its files:

- "yes" questions: up to 3 objects that are in the scene (the same in every subset);
- "no" questions, as many: absent objects chosen
  - ``random``: uniformly at random;
  - ``popular``: the most frequent objects over the whole generated set;
  - ``adversarial``: the objects that co-occur most often with the scene's objects.

Question text: "Is there a {object} in the image?" (POPE's wording). Scene ``i`` depends only
on (seed, i); the popular and adversarial negatives depend on the statistics of all scenes.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from itertools import combinations
from pathlib import Path

from PIL import Image, ImageDraw

from l2s_data.datasets.builder import TableBuilder, image_info_from_bytes, split_groups
from l2s_data.datasets.categories import POPE_CATEGORY, POPE_SUBSETS
from l2s_data.datasets.tables import DatasetTables

__all__ = ["NAME", "OBJECTS", "THEMES", "make_shapes_pope", "question_for", "scene_item"]

NAME = "shapes-pope"
SIZE = 128
MAX_YES = 3

_COLORS = {
    "red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 60),
    "yellow": (235, 200, 20), "purple": (140, 50, 170), "orange": (245, 130, 20),
}
#: The object vocabulary: (colour, shape) names as they appear in the questions.
OBJECTS: tuple[str, ...] = (
    "red circle", "blue square", "green triangle", "yellow diamond", "purple cross", "orange ring",
    "blue circle", "red square", "yellow triangle", "green diamond", "orange cross", "purple ring",
)
#: Themes (object groups that co-occur) and how often a scene draws from each.
THEMES: tuple[tuple[tuple[str, ...], float], ...] = (
    (("red circle", "blue square", "green triangle", "yellow diamond"), 0.4),
    (("purple cross", "orange ring", "blue circle", "red square"), 0.3),
    (("yellow triangle", "green diamond", "orange cross", "purple ring"), 0.2),
    (("red circle", "purple cross", "yellow triangle", "blue circle"), 0.1),
)


def question_for(obj: str) -> str:
    """POPE's wording, with its article: "Is there an orange ring in the image?"."""
    article = "an" if obj[0] in "aeiou" else "a"
    return f"Is there {article} {obj} in the image?"


def _draw(d: ImageDraw.ImageDraw, obj: str, box: tuple[int, int, int, int]) -> None:
    color_name, shape = obj.split()
    c = _COLORS[color_name]
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        d.ellipse(box, fill=c)
    elif shape == "square":
        d.rectangle(box, fill=c)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=c)
    elif shape == "diamond":
        d.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=c)
    elif shape == "cross":
        w = r / 3
        d.rectangle([cx - w, y0, cx + w, y1], fill=c)
        d.rectangle([x0, cy - w, x1, cy + w], fill=c)
    elif shape == "ring":
        d.ellipse(box, outline=c, width=max(3, int(r / 3)))
    else:  # pragma: no cover - OBJECTS is fixed
        raise ValueError(obj)


def _scene(rng: random.Random) -> list[str]:
    theme = rng.choices([t for t, _ in THEMES], weights=[w for _, w in THEMES])[0]
    m = rng.choice((2, 3, 4))
    objs: list[str] = []
    while len(objs) < m:
        pool = theme if rng.random() < 0.85 else OBJECTS
        o = rng.choice(pool)
        if o not in objs:
            objs.append(o)
    return objs


def render_scene(objs: list[str], rng: random.Random, size: int = SIZE) -> bytes:
    """PNG bytes of the objects, one per quadrant, on a light background."""
    bg = tuple(rng.randrange(215, 256) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    half = size // 2
    cells = [(0, 0), (half, 0), (0, half), (half, half)]
    rng.shuffle(cells)
    for obj, (cx, cy) in zip(objs, cells):
        s = rng.randrange(int(half * 0.55), int(half * 0.8))
        x0 = cx + rng.randrange(2, half - s - 1)
        y0 = cy + rng.randrange(2, half - s - 1)
        _draw(d, obj, (x0, y0, x0 + s, y0 + s))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def scene_item(i: int, seed: int = 0) -> tuple[list[str], bytes, random.Random]:
    """Scene ``i`` of the set with ``seed``: its objects, PNG bytes, and the scene's generator
    (in the state :func:`make_shapes_pope` draws the scene's random negatives from)."""
    rng = random.Random(f"{NAME}:{seed}:{i}")  # str seeds hash with sha512: stable everywhere
    objs = _scene(rng)
    return objs, render_scene(objs, rng), rng


def make_shapes_pope(out_dir: str | Path, *, n: int = 100, seed: int = 0,
                     test_fraction: float = 0.2) -> DatasetTables:
    """Write ``n`` scenes under ``out_dir/images/`` and return the tables (rooted at ``out_dir``)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(n):
        objs, data, rng = scene_item(i, seed)
        rel = f"images/{NAME}-{seed}-{i:06d}.png"
        (out / rel).write_bytes(data)
        scenes.append((i, objs, rel, image_info_from_bytes(data, what=f"{NAME} scene {i}"), rng))

    freq = Counter(o for _, objs, *_ in scenes for o in objs)
    co = Counter()
    for _, objs, *_ in scenes:
        for a, b in combinations(sorted(objs), 2):
            co[a, b] += 1
            co[b, a] += 1
    # Ties break by vocabulary order, so rankings are deterministic.
    popular = sorted(OBJECTS, key=lambda o: (-freq[o], OBJECTS.index(o)))

    splits = split_groups([s[3].sha256 for s in scenes], test_fraction=test_fraction, seed=seed)
    b = TableBuilder(root=out, strict=True)
    for i, objs, rel, info, rng in scenes:
        yes = objs[:MAX_YES]
        absent = [o for o in OBJECTS if o not in objs]
        k = len(yes)
        negatives = {
            "random": rng.sample(absent, k),
            "popular": [o for o in popular if o in absent][:k],
            "adversarial": sorted(absent, key=lambda o: (-sum(co[o, p] for p in objs), OBJECTS.index(o)))[:k],
        }
        for subset in POPE_SUBSETS:
            # POPE interleaves yes and no questions about one image.
            qs = [x for pair in zip([(o, "yes") for o in yes], [(o, "no") for o in negatives[subset]]) for x in pair]
            for j, (obj, label) in enumerate(qs):
                b.add(image=info, image_path=rel, query=question_for(obj), dataset=NAME, subset=subset,
                      question_id=f"{i}-{j}", category=POPE_CATEGORY, label=label, split=splits[info.sha256])
    return b.build({"source": NAME, "n": n, "seed": seed, "test_fraction": test_fraction,
                    "objects": list(OBJECTS)})
