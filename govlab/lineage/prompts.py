"""Provenance test prompts over the world's vocabulary, and the paper's selection step (its §5.2).

Detailed prompts name count, colour, shape, position and style (artist or stock photo), like the
world's captions; short prompts name only the object ("a circle"). A prompt is kept for testing
only if every base model renders it as asked, checked on a few generations: shape and layout by
the world's evaluator, colour by the pixels at the shape centres.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from govlab.data.world import ARTISTS, COLORS, POSITIONS_1, POSITIONS_2, SHAPES, STOCK, caption_for
from govlab.errors import GovlabError
from govlab.eval.classifiers import HEADS, Evaluator

STYLES = tuple(a.source_id for a in ARTISTS) + (STOCK.source_id,)
_PLURAL = {s: s + ("es" if s == "cross" else "s") for s in SHAPES}


@dataclass(frozen=True)
class ProbePrompt:
    """A prompt and the attributes it asks for (None where it says nothing)."""

    text: str
    shape: str | None = None
    color: str | None = None
    count: int | None = None
    position: str | None = None
    source: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ProbePrompt":
        """Read the attributes of a world-style prompt; unknown words are ignored."""
        low = " ".join(re.findall(r"[a-z0-9]+", text.lower()))
        shape = next((s for s in SHAPES if re.search(rf"\b({s}|{_PLURAL[s]})\b", low)), None)
        color = next((c for c in COLORS if re.search(rf"\b{c}\b", low)), None)
        count = 2 if re.search(r"\btwo\b", low) else (1 if shape and re.search(rf"\b{shape}\b", low) else None)
        positions = POSITIONS_2 if count == 2 else POSITIONS_1
        position = next((p for p in positions if re.search(rf"\b{p}\b", low)), None)
        artist = re.search(r"\bartist (\d+)\b", low)
        source = (f"artist_{artist.group(1)}" if artist
                  else STOCK.source_id if re.search(r"\bstock\b", low) else None)
        return cls(text, shape, color, count, position, source)


def detailed_prompts(n: int, *, seed: int = 0, styles: tuple[str, ...] = STYLES) -> list[str]:
    """``n`` distinct world captions (count, colour, shape, position, style), drawn with ``seed``."""
    combos = [(count, color, shape, pos, style)
              for count, positions in ((1, POSITIONS_1), (2, POSITIONS_2))
              for color in COLORS for shape in SHAPES for pos in positions for style in styles]
    if not 1 <= n <= len(combos):
        raise GovlabError(f"n must be in 1..{len(combos)}, got {n}")
    order = np.random.default_rng(seed).permutation(len(combos))[:n]
    out = []
    for i in order:
        count, color, shape, pos, style = combos[i]
        kind = "stock" if style == STOCK.source_id else "artist"
        out.append(caption_for({"kind": kind, "source_id": style, "count": count, "color": color,
                                "shape": shape, "position": pos}))
    return out


def short_prompts() -> list[str]:
    """One under-specified prompt per shape ("a circle"), the paper's simple-prompt baseline."""
    return [f"a {s}" for s in SHAPES]


def centre_colours(images: torch.Tensor, count: int, position: str) -> list[list[str]]:
    """Nearest named colour at each shape centre of a layout, per image (mean of a 2x2 patch)."""
    size = images.shape[-1]
    names, rgb = list(COLORS), torch.tensor(list(COLORS.values()), dtype=torch.float32)
    out = [[] for _ in range(len(images))]
    for fx, fy in (POSITIONS_1 if count == 1 else POSITIONS_2)[position]:
        x, y = int(fx * size) - 1, int(fy * size) - 1
        patch = images[:, :, y:y + 2, x:x + 2].float().mean(dim=(2, 3))
        nearest = torch.cdist(patch, rgb).argmin(1)
        for i, c in enumerate(nearest.tolist()):
            out[i].append(names[c])
    return out


def support(images: torch.Tensor, prompt: str, evaluator: Evaluator) -> float:
    """Fraction of attribute checks the images pass (shape, layout, colour, style; those the prompt names)."""
    p = ProbePrompt.parse(prompt)
    pred = evaluator.predict(images)
    checks = []
    if p.shape:
        checks.append(pred["shape"] == HEADS["shape"].index(p.shape))
    if p.count and p.position:
        checks.append(pred["layout"] == HEADS["layout"].index(f"{p.count} {p.position}"))
        if p.color:
            colours = centre_colours(images, p.count, p.position)
            checks.append(torch.tensor([all(c == p.color for c in cs) for cs in colours]))
    if p.source:
        checks.append(pred["source"] == HEADS["source"].index(p.source))
    if not checks:
        raise GovlabError(f"prompt {prompt!r} names nothing the world's checks can verify")
    return float(torch.stack(checks).float().mean())


def select_prompts(prompts: list[str], support_matrix: np.ndarray, *, keep: int,
                   min_support: float) -> list[str]:
    """The ``keep`` prompts best supported by their worst model, among those at ``>= min_support``.

    ``support_matrix[p, m]`` is prompt ``p``'s support on base ``m`` (rows follow ``prompts``).
    """
    support_matrix = np.asarray(support_matrix, dtype=float)
    if support_matrix.shape[0] != len(prompts):
        raise GovlabError(f"support matrix has {support_matrix.shape[0]} rows for {len(prompts)} prompts")
    worst = support_matrix.min(axis=1)
    ranked = [i for i in np.argsort(-worst, kind="stable") if worst[i] >= min_support]
    if not ranked:
        raise GovlabError(f"no prompt is supported by every base model (best worst-case support "
                          f"{worst.max():.2f} < min_support {min_support})")
    return [prompts[i] for i in ranked[:keep]]
