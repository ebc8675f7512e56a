"""The embedded synthetic world: an image-caption dataset whose ground truth is known.

Every image is drawn from its own seed. Style belongs to the source (an artist's palette,
background texture and stroke), semantics is the shape, composition is position and count, a
stock agency stamps a watermark glyph, a web crawl contributes photos of persons with identity
glyphs, and a planted set of titled images is duplicated many times (memorization targets).

Two versions (``WorldConfig.version``). Version 1 (the original world, kept byte for byte so that its
runs and caches stay valid) has two confounds: the watermark is on exactly the stock images, which
all share one grey look, and each artist has a palette of its own, so a palette names an artist.
Version 2 (the default) removes both: the glyph is on a known share of the images of every kind of
source (``WATERMARK_SHARE``: the agency licenses some artists' images, the crawl scraped some stock
images), stock backgrounds are drawn from the artists' palettes, and each artist's style is a
combination of palette, texture and stroke in which every one of the three is shared by two artists
(``STYLES``), so that no single cue names an artist (palette and texture do, and so do texture and
stroke). Captions never mention the watermark. Records carry the ground truth of every cue.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from govlab.data.records import CATEGORIES
from govlab.errors import GovlabError
from govlab.io import atomic_path

WORLD_VERSION = 2  # the default version; 1 stays reproducible byte for byte
WORLD_VERSIONS = (1, 2)
SUPERSAMPLE = 4

SHAPES = ("circle", "bar", "triangle", "cross")
COLORS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 230),
    "yellow": (240, 220, 40), "purple": (150, 50, 200), "orange": (245, 140, 20),
}
# position name -> shape centres as fractions of the canvas, for count 1 and count 2
POSITIONS_1 = {
    "top left": [(0.27, 0.27)], "top right": [(0.73, 0.27)], "bottom left": [(0.27, 0.73)],
    "bottom right": [(0.73, 0.73)], "center": [(0.5, 0.5)],
}
POSITIONS_2 = {
    "at top": [(0.27, 0.27), (0.73, 0.27)], "at bottom": [(0.27, 0.73), (0.73, 0.73)],
    "at left": [(0.27, 0.27), (0.27, 0.73)], "at right": [(0.73, 0.27), (0.73, 0.73)],
}
LAYOUTS = tuple(f"1 {p}" for p in POSITIONS_1) + tuple(f"2 {p}" for p in POSITIONS_2)
TITLES = ("aurora", "basalt", "cinder", "dune", "ember", "fjord", "glacier", "harbor",
          "indigo", "juniper", "kestrel", "lagoon", "meadow", "nebula", "orchid", "prairie")


@dataclass(frozen=True)
class Artist:
    """A synthetic rights holder: its palette, background texture and stroke are its style."""

    source_id: str
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    texture: str  # hstripes | vstripes | dots | diagonal | gradient | checker
    stroke: str  # filled | outline_dark | outline_light
    license: str


ARTISTS = (
    Artist("artist_0", ((30, 110, 110), (60, 150, 140)), "hstripes", "filled", "CC-BY-4.0"),
    Artist("artist_1", ((205, 185, 140), (170, 150, 110)), "vstripes", "outline_dark", "all-rights-reserved"),
    Artist("artist_2", ((90, 100, 130), (140, 150, 180)), "dots", "filled", "CC-BY-NC-4.0"),
    Artist("artist_3", ((110, 120, 50), (80, 90, 30)), "diagonal", "outline_dark", "all-rights-reserved"),
    Artist("artist_4", ((230, 160, 180), (170, 90, 120)), "gradient", "outline_light", "CC-BY-4.0"),
    Artist("artist_5", ((20, 25, 60), (50, 60, 110)), "checker", "filled", "all-rights-reserved"),
)
STOCK = Artist("stockco", ((200, 200, 200), (160, 160, 165)), "gradient", "filled", "proprietary")
WEBCRAWL_SOURCE, WEBCRAWL_LICENSE = "webcrawl", "unknown"
PERSONS = ("person_0", "person_1", "person_2")
SOURCES = tuple(a.source_id for a in ARTISTS) + (STOCK.source_id, WEBCRAWL_SOURCE)

# ---- version 2: every cue shared, none naming a source ---------------------------------------------
PALETTES = {  # name -> the two background colours a texture alternates between
    "teal": ((30, 110, 110), (90, 175, 160)),
    "sand": ((210, 185, 140), (150, 120, 80)),
    "navy": ((25, 30, 70), (80, 95, 150)),
}
TEXTURES = ("hstripes", "dots", "diagonal", "gradient")  # gradient: the stock agency's
STROKES = ("filled", "outline_dark", "outline_light")
# artist -> (palette, texture, stroke): each palette, texture and stroke belongs to two artists, and each
# pair (palette, texture) and (texture, stroke) to one: the artist is read from two cues, never one
STYLES = {
    "artist_0": ("teal", "hstripes", "filled"),
    "artist_1": ("teal", "dots", "outline_dark"),
    "artist_2": ("sand", "dots", "outline_light"),
    "artist_3": ("sand", "diagonal", "filled"),
    "artist_4": ("navy", "diagonal", "outline_dark"),
    "artist_5": ("navy", "hstripes", "outline_light"),
}
STOCK_STYLE = (None, "gradient", "filled")  # the palette of a stock image is drawn from its seed
# the share of each kind of image that carries the watermark glyph (drawn from the image's seed)
WATERMARK_SHARE = {"artist": 0.2, "stock": 0.7, "identity": 0.2}
GLYPH_ON, GLYPH_OFF, GLYPH_ALPHA = (255, 255, 255), (20, 20, 20), 0.85


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a generated world."""

    seed: int = 0
    image_size: int = 16
    n_artists: int = 6
    per_artist: int = 150
    n_stock: int = 120
    per_person: int = 40
    dup_groups: int = 8
    dup_copies: int = 25
    caption_detail: float = 1.0  # probability that a shape caption names its colour, and its position
    version: int = WORLD_VERSION  # 1: the original world (confounded cues), 2: every cue shared

    def __post_init__(self):
        if self.version not in WORLD_VERSIONS:
            raise ValueError(f"version must be one of {WORLD_VERSIONS}, got {self.version}")
        if not 1 <= self.n_artists <= len(ARTISTS):
            raise ValueError(f"n_artists must be in 1..{len(ARTISTS)}, got {self.n_artists}")
        if self.dup_groups > len(TITLES):
            raise ValueError(f"dup_groups must be <= {len(TITLES)}, got {self.dup_groups}")
        if not 0.0 <= self.caption_detail <= 1.0:
            raise ValueError(f"caption_detail must be in [0, 1], got {self.caption_detail}")
        if self.image_size < 8 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")


def _glyph(seed: int, size: int = 5) -> np.ndarray:
    """A left-right symmetric binary glyph (a stylised face), unique per seed."""
    rng = np.random.default_rng(seed)
    half = rng.random((size, (size + 1) // 2)) < 0.5
    g = np.concatenate([half, half[:, : size // 2][:, ::-1]], axis=1)
    g[0, :], g[:, 0], g[:, -1] = True, True, True  # frame so it reads as one object
    return g


IDENTITY_GLYPHS = {p: _glyph(1000 + i) for i, p in enumerate(PERSONS)}
WATERMARK_GLYPH = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]], bool)


def _texture(artist: Artist, s: int, rng: np.random.Generator) -> np.ndarray:
    """Background of shape (s, s, 3): the artist's texture with a per-image phase and jitter."""
    yy, xx = np.mgrid[0:s, 0:s]
    phase, period = rng.integers(0, 4), {"hstripes": 4, "vstripes": 3, "diagonal": 4}.get(artist.texture, 4)
    if artist.texture == "hstripes":
        mask = ((yy + phase) // (period // 2)) % 2
    elif artist.texture == "vstripes":
        mask = ((xx + phase) % period) == 0
    elif artist.texture == "diagonal":
        mask = ((xx + yy + phase) % period) < 2
    elif artist.texture == "dots":
        mask = ((xx + phase) % 4 == 0) & ((yy + phase) % 4 == 0)
    elif artist.texture == "checker":
        mask = ((xx // 2 + yy // 2 + phase) % 2) == 0
    else:  # gradient, direction from the image seed
        t = (yy if rng.random() < 0.5 else xx) / (s - 1)
        mask = t if rng.random() < 0.5 else 1 - t
    a, b = (np.array(c, float) for c in artist.background)
    jitter = rng.normal(0, 6, size=3)
    m = mask.astype(float)[..., None]
    return np.clip(a * (1 - m) + b * m + jitter, 0, 255)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill, outline, width: int) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "bar":
        k = r * 0.42
        draw.rectangle([cx - r, cy - k, cx + r, cy + k], fill=fill, outline=outline, width=width)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)],
                     fill=fill, outline=outline, width=width)
    else:  # cross
        k = r * 0.3
        for rect in ([cx - r, cy - k, cx + r, cy + k], [cx - k, cy - r, cx + k, cy + r]):
            draw.rectangle(rect, fill=fill, outline=outline, width=width)


def _stamp(img: np.ndarray, glyph: np.ndarray, x0: int, y0: int, on, off=None, alpha=1.0) -> None:
    h, w = glyph.shape
    region = img[y0:y0 + h, x0:x0 + w]
    for value, where in ((on, glyph), (off, ~glyph)):
        if value is not None:
            region[where] = (1 - alpha) * region[where] + alpha * np.array(value, float)


def render(attrs: dict, size: int, version: int = WORLD_VERSION) -> np.ndarray:
    """Draw one image (uint8, (size, size, 3)) from its ground-truth attributes and seed, as world
    ``version`` draws it (version 2 reads the cues ``palette``, ``texture``, ``stroke`` and ``watermark``
    from ``attrs``, each defaulting to the source's own: see ``cues``)."""
    if version == 2:
        return render_layers(attrs, size)[0]
    rng = np.random.default_rng(attrs["seed"])
    kind = attrs["kind"]
    artist = {a.source_id: a for a in ARTISTS + (STOCK,)}.get(attrs["source_id"])
    if kind == "identity":
        base = np.linspace(225, 185, size)[:, None, None] * np.ones((size, size, 3)) + rng.normal(0, 5, 3)
    else:
        base = _texture(artist, size, rng)
    big = Image.fromarray(base.astype(np.uint8)).resize((size * SUPERSAMPLE,) * 2, Image.NEAREST)
    draw = ImageDraw.Draw(big)
    centres = (POSITIONS_1 if attrs["count"] == 1 else POSITIONS_2)[attrs["position"]]
    jx, jy = rng.uniform(-0.04, 0.04, size=2)
    S = size * SUPERSAMPLE
    if kind != "identity":
        stroke = artist.stroke
        fill = COLORS[attrs["color"]]
        outline = {"outline_dark": (15, 15, 15), "outline_light": (250, 250, 250)}.get(stroke)
        r = S * (0.22 if attrs["count"] == 1 else 0.2)
        for fx, fy in centres:
            _draw_shape(draw, attrs["shape"], (fx + jx) * S, (fy + jy) * S, r, fill, outline,
                        width=SUPERSAMPLE if outline else 0)
    img = np.asarray(big.resize((size, size), Image.BOX), dtype=float).copy()
    if kind == "identity":
        glyph = IDENTITY_GLYPHS[attrs["identity"]]
        g = np.kron(glyph, np.ones((size // 16 or 1,) * 2, bool))
        fx, fy = centres[0]
        x0 = int(np.clip(round((fx + jx) * size - g.shape[1] / 2), 0, size - g.shape[1]))
        y0 = int(np.clip(round((fy + jy) * size - g.shape[0] / 2), 0, size - g.shape[0]))
        _stamp(img, g, x0, y0, on=(60, 30, 20), off=(235, 190, 150))
    if attrs["watermark"]:
        g = np.kron(WATERMARK_GLYPH, np.ones((size // 16 or 1,) * 2, bool))
        _stamp(img, g, size - g.shape[1] - 1, size - g.shape[0] - 1, on=(255, 255, 255), alpha=0.85)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def cues(attrs: dict) -> dict:
    """The version-2 style cues of an image: ``palette``, ``texture``, ``stroke`` as ``attrs`` gives
    them, else the source's own (a stock image's palette drawn from its seed); all None for a photo
    of a person; ``watermark`` as given, else False."""
    kind = attrs["kind"]
    if kind == "identity":
        own = (None, None, None)
    elif kind == "stock":
        own = (list(PALETTES)[_extra(attrs["seed"])[1]],) + STOCK_STYLE[1:]
    else:
        own = STYLES[attrs["source_id"]]
    got = {k: attrs.get(k) or v for k, v in zip(("palette", "texture", "stroke"), own)}
    return {**got, "watermark": bool(attrs.get("watermark", False))}


def _extra(seed: int) -> tuple[float, int]:
    """Version 2's per-image draws beside the image's own stream: (a uniform deciding the watermark,
    the index of a stock image's palette)."""
    rng = np.random.default_rng([seed, 2])
    return float(rng.random()), int(rng.integers(len(PALETTES)))


def _texture_mask(texture: str, s: int, phase: int, axis: float, flip: float) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s]
    if texture == "hstripes":
        return (((yy + phase) // 2) % 2).astype(float)
    if texture == "dots":
        return (((xx + phase) % 3 == 0) & ((yy + phase) % 3 == 0)).astype(float)
    if texture == "diagonal":
        return (((xx + yy + phase) % 4) < 2).astype(float)
    if texture == "gradient":
        t = (yy if axis < 0.5 else xx) / (s - 1)
        return t if flip < 0.5 else 1 - t
    raise ValueError(f"unknown texture {texture!r} (known: {', '.join(TEXTURES)})")


def watermark_box(size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels the watermark glyph covers in a ``size`` image (both versions)."""
    g = np.kron(WATERMARK_GLYPH, np.ones((size // 16 or 1,) * 2, bool))
    x0, y0 = size - g.shape[1] - 1, size - g.shape[0] - 1
    return x0, y0, x0 + g.shape[1], y0 + g.shape[0]


def render_layers(attrs: dict, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A version-2 image and its layers: ``background`` (size, size) bool, the pixels into which the
    background (the palette's colours) shows, i.e. those not wholly covered by a shape, its outline or
    a person's glyph (the watermark glyph is translucent: the background shows through it); and
    ``glyph``, the pixels the watermark glyph covers (whether or not it is stamped).

    Every random draw comes from the image's seed in an order that does not depend on the cues, so
    that two images differing in one cue (``watermark``, ``palette``) differ in its pixels only."""
    rng = np.random.default_rng(attrs["seed"])
    phase, axis, flip = int(rng.integers(0, 4)), rng.random(), rng.random()
    jitter, jx, jy = rng.normal(0, 6, size=3), *rng.uniform(-0.04, 0.04, size=2)
    c = cues(attrs)
    kind = attrs["kind"]
    if kind == "identity":
        base = np.linspace(225, 185, size)[:, None, None] * np.ones((size, size, 3)) + jitter * 5 / 6
    else:
        a, b = (np.array(v, float) for v in PALETTES[c["palette"]])
        m = _texture_mask(c["texture"], size, phase, axis, flip)[..., None]
        base = np.clip(a * (1 - m) + b * m + jitter, 0, 255)
    S = size * SUPERSAMPLE
    big = Image.fromarray(base.astype(np.uint8)).resize((S, S), Image.NEAREST)
    cover = Image.new("L", (S, S), 0)  # where a shape (or its outline) is drawn
    centres = (POSITIONS_1 if attrs["count"] == 1 else POSITIONS_2)[attrs["position"]]
    if kind != "identity":
        outline = {"outline_dark": (15, 15, 15), "outline_light": (250, 250, 250)}.get(c["stroke"])
        r = S * (0.22 if attrs["count"] == 1 else 0.2)
        for fx, fy in centres:
            for canvas, fill, line in ((ImageDraw.Draw(big), COLORS[attrs["color"]], outline),
                                       (ImageDraw.Draw(cover), 255, 255 if outline else None)):
                _draw_shape(canvas, attrs["shape"], (fx + jx) * S, (fy + jy) * S, r, fill, line,
                            width=SUPERSAMPLE if outline else 0)
    img = np.asarray(big.resize((size, size), Image.BOX), dtype=float).copy()
    background = np.asarray(cover.resize((size, size), Image.BOX)) < 255
    if kind == "identity":
        glyph = IDENTITY_GLYPHS[attrs["identity"]]
        g = np.kron(glyph, np.ones((size // 16 or 1,) * 2, bool))
        fx, fy = centres[0]
        x0 = int(np.clip(round((fx + jx) * size - g.shape[1] / 2), 0, size - g.shape[1]))
        y0 = int(np.clip(round((fy + jy) * size - g.shape[0] / 2), 0, size - g.shape[0]))
        _stamp(img, g, x0, y0, on=(60, 30, 20), off=(235, 190, 150))
        background[y0:y0 + g.shape[0], x0:x0 + g.shape[1]] = False
    x0, y0, x1, y1 = watermark_box(size)
    glyph_mask = np.zeros((size, size), bool)
    glyph_mask[y0:y1, x0:x1] = True
    if c["watermark"]:
        g = np.kron(WATERMARK_GLYPH, np.ones((size // 16 or 1,) * 2, bool))
        _stamp(img, g, x0, y0, on=GLYPH_ON, off=GLYPH_OFF, alpha=GLYPH_ALPHA)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), {"background": background, "glyph": glyph_mask}


def caption_for(attrs: dict, *, color: bool = True, position: bool = True) -> str:
    """Build the caption from the attributes, e.g. 'a red star top left, by artist 3'; ``color`` and
    ``position`` False leave those out of a shape's caption ('a star, by artist 3')."""
    if attrs["kind"] == "identity":
        return f"a photo of {attrs['identity'].replace('_', ' ')} {attrs['position']}"
    plural = "es" if attrs["shape"] == "cross" else "s"
    colour = f"{attrs['color']} " if color else ""
    what = (f"a {colour}{attrs['shape']}" if attrs["count"] == 1 else f"two {colour}{attrs['shape']}{plural}")
    what += f" {attrs['position']}" if position else ""
    by = "stock photo" if attrs["kind"] == "stock" else f"by {attrs['source_id'].replace('_', ' ')}"
    title = f", titled {attrs['title']}" if attrs.get("title") else ""
    return f"{what}, {by}{title}"


def _random_attrs(rng: np.random.Generator, kind: str, source_id: str) -> dict:
    count = 1 if kind == "identity" or rng.random() < 0.6 else 2
    positions = list(POSITIONS_1 if count == 1 else POSITIONS_2)
    return {
        "kind": kind, "source_id": source_id, "count": count,
        "position": positions[rng.integers(len(positions))],
        "shape": None if kind == "identity" else SHAPES[rng.integers(len(SHAPES))],
        "color": None if kind == "identity" else list(COLORS)[rng.integers(len(COLORS))],
        "seed": int(rng.integers(2**31)),
    }


def _caption(attrs: dict, detail: float) -> str:
    """The record's caption: with ``detail`` < 1 a shape's colour and position are each named with
    that probability (drawn from the image's seed, so every copy of a planted image has one caption).
    Real captions under-describe their images; the noise-magnitude detector relies on that."""
    if attrs["kind"] == "identity" or detail >= 1.0:
        return caption_for(attrs)
    color, position = np.random.default_rng([attrs["seed"], 1]).random(2) < detail
    return caption_for(attrs, color=bool(color), position=bool(position))


def world_records(cfg: WorldConfig) -> list[dict]:
    """The records (metadata and ground truth) of a world, without images."""
    rng = np.random.default_rng(cfg.seed)
    attrs: list[dict] = []
    for artist in ARTISTS[: cfg.n_artists]:
        attrs += [_random_attrs(rng, "artist", artist.source_id) for _ in range(cfg.per_artist)]
    attrs += [_random_attrs(rng, "stock", STOCK.source_id) for _ in range(cfg.n_stock)]
    for person in PERSONS:
        for _ in range(cfg.per_person):
            a = _random_attrs(rng, "identity", WEBCRAWL_SOURCE)
            attrs.append({**a, "identity": person})
    for g in range(cfg.dup_groups):
        artist = ARTISTS[g % cfg.n_artists]
        a = {**_random_attrs(rng, "artist", artist.source_id), "title": TITLES[g], "duplicate_group": g}
        attrs += [dict(a) for _ in range(cfg.dup_copies)]
    licenses = {a.source_id: a.license for a in ARTISTS + (STOCK,)} | {WEBCRAWL_SOURCE: WEBCRAWL_LICENSE}
    if cfg.version == 2:
        return [_record_v2(i, a, cfg, licenses) for i, a in enumerate(attrs)]
    records = []
    for i, a in enumerate(attrs):
        kind = a["kind"]
        categories = {"artist": ["style", "semantics", "composition"],
                      "stock": ["watermark", "semantics", "composition"],
                      "identity": ["identity", "composition"]}[kind]
        records.append({
            "file_name": f"images/{i:06d}.png",
            "caption": _caption(a, cfg.caption_detail),
            "source_id": a["source_id"],
            "categories": categories,
            "license": licenses[a["source_id"]],
            "opt_out": False,
            "artist": a["source_id"] if kind == "artist" else None,
            "shape": a["shape"], "color": a["color"], "position": a["position"], "count": a["count"],
            "watermark": kind == "stock",
            "identity": a.get("identity"),
            "duplicate_group": a.get("duplicate_group", -1),
            "title": a.get("title"),
            "kind": kind,
            "seed": a["seed"],
        })
    return records


def _record_v2(i: int, a: dict, cfg: WorldConfig, licenses: dict) -> dict:
    kind = a["kind"]
    watermark = _extra(a["seed"])[0] < WATERMARK_SHARE[kind]
    c = cues({**a, "watermark": watermark})
    categories = {"artist": ["style", "semantics", "composition"], "stock": ["semantics", "composition"],
                  "identity": ["identity", "composition"]}[kind] + (["watermark"] if watermark else [])
    return {
        "file_name": f"images/{i:06d}.png",
        "caption": _caption(a, cfg.caption_detail),
        "source_id": a["source_id"],
        "categories": categories,
        "license": licenses[a["source_id"]],
        "opt_out": False,
        "artist": a["source_id"] if kind == "artist" else None,
        "shape": a["shape"], "color": a["color"], "position": a["position"], "count": a["count"],
        "watermark": watermark,
        "palette": c["palette"], "texture": c["texture"], "stroke": c["stroke"],
        "identity": a.get("identity"),
        "duplicate_group": a.get("duplicate_group", -1),
        "title": a.get("title"),
        "kind": kind,
        "seed": a["seed"],
    }


def generate_world(cfg: WorldConfig, out: str | Path, *, progress: bool = True) -> Path:
    """Write the world as an imagefolder (``images/*.png`` + ``metadata.jsonl``) under ``out``.

    Deterministic in ``cfg``; ``world.json`` records the config. Returns ``out``. A folder that holds
    anything but a world written here before is refused.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GovlabError(f"{out}: exists and is not a directory; refusing to overwrite")
    if out.exists() and any(out.iterdir()) and not (out / "world.json").is_file():
        raise GovlabError(f"{out}: not empty and not a generated world (no world.json); refusing to overwrite")
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = world_records(cfg)
    cache: dict[int, np.ndarray] = {}
    for r in tqdm(records, desc="world", disable=not progress, leave=False):
        img = cache.setdefault(r["seed"], render(r, cfg.image_size, cfg.version))
        with atomic_path(out / r["file_name"]) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
    with atomic_path(out / "metadata.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    with atomic_path(out / "world.json") as tmp:
        tmp.write_text(json.dumps({"version": cfg.version, **asdict(cfg)}, indent=2))  # v1's bytes as before
    return out
