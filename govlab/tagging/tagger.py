"""Categories, source, license and opt-out for images whose metadata lacks them.

Evidence, strongest first: what the record already says (kept as it is); a source field (URL domain,
EXIF artist/copyright, a folder level); the taxonomy's caption patterns; embedding rules for what
captions do not say (a linear classifier on the encoder's embeddings per category, fitted on its
exemplars; for sources, clusters of the embeddings matched to the exemplars of known sources, and a
linear classifier over those exemplars); else one source per unique origin (a cluster far from every
known source, or, with no source exemplars, each distinct image). Every assigned value is listed with
its evidence and confidence in ``review.jsonl``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from govlab.data.world import CATEGORIES
from govlab.errors import GovlabError
from govlab.io import _UMASK, json_lines, write_json, write_text
from govlab.tagging.sources import check_mode, source_from_fields
from govlab.tagging.taxonomy import Taxonomy, load_taxonomy

FIELDS = ("categories", "source_id", "license", "opt_out")
REVIEW, SUMMARY = "review.jsonl", "tag.json"
NOVELTY = 1.25  # a cluster is of no known source when its median distance to the nearest source
#                 exceeds this many times the 90th percentile of held-out exemplars' distances (4-fold);
#                 chosen on the embedded world (docs/tagging.md)


@dataclass
class Row:
    """One assigned (or, for an embedding rule, withheld) value of one record."""

    file_name: str
    field: str
    value: object
    confidence: float
    evidence: str
    assigned: bool = True


class Tagger:
    """Fitted once on a taxonomy's exemplars (``fit``), then tags records and their images (``tag``)."""

    def __init__(self, taxonomy: Taxonomy, encoder, *, source_from: str = "auto", seed: int = 0):
        self.taxonomy, self.encoder = taxonomy, encoder
        self.source_from, self.seed = check_mode(source_from), seed
        self.classifiers: dict[str, object] = {}
        self.source_clf = self.whiten = self.spacing = None

    def fit(self) -> "Tagger":
        rules = [*self.taxonomy.categories.values(), *self.taxonomy.sources.values()]
        paths = sorted({p for r in rules for p in r.exemplars})
        if not paths:
            return self
        x = self.encoder([_open(p, f"exemplar {p}")[0] for p in paths])
        row = {p: i for i, p in enumerate(paths)}
        for c, rule in self.taxonomy.categories.items():
            if not rule.exemplars:
                continue
            y = np.zeros(len(paths), int)
            y[[row[p] for p in rule.exemplars]] = 1
            if y.all():
                raise GovlabError(f"{self.taxonomy.path}: categories.{c}: its exemplars need exemplars of "
                                  f"other images beside them (of other categories or sources) to tell them apart")
            self.classifiers[c] = LogisticRegression(class_weight="balanced", max_iter=5000).fit(x, y)
        src = [(row[p], s) for s, r in self.taxonomy.sources.items() for p in r.exemplars]
        if src:
            idx, labels = [i for i, _ in src], [s for _, s in src]
            if len(set(labels)) > 1:
                self.source_clf = LogisticRegression(max_iter=5000).fit(x[idx], labels)
            else:
                self.source_clf = _Constant(labels[0])
            names = sorted(set(labels))
            of = np.array([names.index(s) for s in labels])
            if np.bincount(of).min() >= 4:  # a within-source covariance, calibrated on held-out exemplars
                self.means, self.covariance = _within(x[idx], of)
                self.whiten = np.linalg.cholesky(self.covariance.precision_)  # |z - z'|^2 = Mahalanobis^2
                held = []
                for fit_rows, test_rows in StratifiedKFold(4, shuffle=True, random_state=self.seed).split(idx, of):
                    means, cov = _within(x[idx][fit_rows], of[fit_rows])
                    held.append(np.stack([cov.mahalanobis(x[idx][test_rows] - m) for m in means], 1).min(1))
                self.spacing = float(np.quantile(np.concatenate(held), 0.9)) or 1e-6
        return self

    # -- tagging ------------------------------------------------------------------------------
    def tag(self, records: list[dict], images: list[Image.Image], exifs: list) -> tuple[list[dict], list[Row], dict]:
        tax, n = self.taxonomy, len(records)
        x = self.encoder(images) if self.classifiers or self.source_clf is not None else None
        rows: list[Row] = []
        cats: list[dict[str, float] | None] = [None] * n
        src: list[tuple[str, float, str, str] | None] = [None] * n  # (source, confidence, kind, evidence)
        for i, rec in enumerate(records):
            name, caption = rec["file_name"], rec["caption"]
            if "categories" in rec:
                rows += [Row(name, "categories", c, 1.0, "given in metadata.jsonl") for c in rec["categories"]]
            else:
                cats[i] = {}
                for c, rule in tax.categories.items():
                    if m := rule.match(caption):
                        cats[i][c] = 1.0
                        rows.append(Row(name, "categories", c, 1.0, f"caption matches {m!r}"))
            if "source_id" in rec:
                src[i] = (rec["source_id"], 1.0, "given", "given in metadata.jsonl")
            elif found := source_from_fields(rec, exifs[i], self.source_from):
                src[i] = (found[0], 1.0, "field", found[1])
            else:
                hits = [(s, m) for s, rule in tax.sources.items() if (m := rule.match(caption))]
                if hits:
                    s, m = hits[0]
                    others = f" (also matches {', '.join(h for h, _ in hits[1:])})" if len(hits) > 1 else ""
                    src[i] = (s, 1.0 / len(hits), "caption", f"caption matches {m!r}{others}")
        # embedding rules for the categories captions did not give
        for c, clf in self.classifiers.items():
            p = clf.predict_proba(x)[:, 1]
            thr = tax.categories[c].threshold
            for i in range(n):
                if cats[i] is None or c in cats[i]:
                    continue
                ev = f"embedding: p={p[i]:.3f} from {len(tax.categories[c].exemplars)} exemplars (threshold {thr})"
                if p[i] >= thr:
                    cats[i][c] = float(p[i])
                    rows.append(Row(records[i]["file_name"], "categories", c, float(p[i]), ev))
                else:
                    rows.append(Row(records[i]["file_name"], "categories", c, 1 - float(p[i]), ev, assigned=False))
        self._sources_by_embedding(records, images, x, src)
        # what sources carry, license, opt-out
        out = []
        for i, rec in enumerate(records):
            name = rec["file_name"]
            s, conf, kind, ev = src[i]
            rows.append(Row(name, "source_id", s, conf, ev))
            rule = tax.sources.get(s)
            if cats[i] is not None:
                for c in rule.categories if rule else ():
                    if c not in cats[i]:
                        cats[i][c] = conf
                        rows.append(Row(name, "categories", c, conf, f"source {s} carries {c}"))
            new = {k: v for k, v in rec.items() if not k.startswith("_")}
            new["source_id"] = s
            if cats[i] is not None:
                new["categories"] = [c for c in CATEGORIES if c in cats[i]]
            for fld, value, default in (("license", rule and rule.license, tax.license),
                                        ("opt_out", rule and rule.opt_out, tax.opt_out)):
                if fld in rec:
                    rows.append(Row(name, fld, rec[fld], 1.0, "given in metadata.jsonl"))
                elif value is not None:
                    new[fld] = value
                    rows.append(Row(name, fld, value, conf, f"taxonomy: source {s}"))
                else:
                    new[fld] = default
                    rows.append(Row(name, fld, default, 1.0, "taxonomy default (the source sets none)"))
            out.append(new)
        rows.sort(key=lambda r: r.confidence)  # stable: low confidence first, then record order
        kinds = Counter(s[2] for s in src)
        summary = {"records": n, "sources": dict(Counter(s[0] for s in src)), "source_evidence": dict(kinds),
                   "category_evidence": dict(Counter(_kind(r.evidence) for r in rows
                                                     if r.field == "categories" and r.assigned)),
                   "low_confidence_rows": sum(r.confidence < 0.8 for r in rows),
                   # categories told by the image alone: a caption adapter has no trigger word for them
                   "from_images_only": dict(Counter(r.value for r in rows if r.field == "categories"
                                                    and r.assigned and r.evidence.startswith("embedding")))}
        return out, rows, summary

    def _sources_by_embedding(self, records, images, x, src) -> None:
        """Sources of the records nothing else named. The images are clustered in the encoder's space
        whitened by the exemplars' within-source covariance (where the differences between sources
        count, and those within one, such as shape and layout, do not); a cluster whose median
        Mahalanobis distance to the nearest source's exemplar mean exceeds ``NOVELTY`` times the
        90th percentile of held-out exemplars' distances (4-fold) is one unknown origin. Every other
        image goes to the source a linear classifier fitted on the source exemplars gives it. With no
        source exemplars, each distinct image is its own origin."""
        todo = [i for i, s in enumerate(src) if s is None]
        if not todo:
            return
        if self.source_clf is None:
            for i in todo:
                digest = hashlib.sha256(images[i].tobytes()).hexdigest()[:12]
                src[i] = (f"origin_{digest}", 0.5, "origin", "no source field, caption pattern or source exemplars: "
                          "one source per distinct image content")
            return
        proba = self.source_clf.predict_proba(x[todo])
        classes = [str(c) for c in self.source_clf.classes_]
        novel: dict[int, tuple[str, str]] = {}  # position in todo -> (origin, evidence)
        if self.whiten is not None:
            dist = self._distance(x[todo])
            z = x[todo] @ self.whiten
            k = min(len(todo), 2 * len(classes) + 2)
            labels = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit_predict(z)
            for cl in range(k):
                members = np.flatnonzero(labels == cl)
                med = float(np.median(dist[members])) if len(members) else 0.0
                if med > NOVELTY * self.spacing:
                    for j in members:
                        novel[j] = (f"unknown_{cl}", f"no source field, caption pattern or exemplar match: embedding "
                                    f"cluster {cl} ({len(members)} images, median distance {med:.0f} to the nearest "
                                    f"source's exemplars > {NOVELTY * self.spacing:.0f}) is one unknown origin")
        for j, i in enumerate(todo):
            if j in novel:
                src[i] = (novel[j][0], 0.5, "origin", novel[j][1])
            else:
                k = int(proba[j].argmax())
                runner = sorted(zip(proba[j], classes))[-2] if len(classes) > 1 else (0.0, "-")
                src[i] = (classes[k], float(proba[j, k]), "embedding",
                          f"embedding: nearest to {classes[k]}'s exemplars (p={proba[j, k]:.3f}; next "
                          f"{runner[1]} p={runner[0]:.3f})")

    def _distance(self, x: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (within-source covariance) to the nearest source's exemplar mean."""
        return np.stack([self.covariance.mahalanobis(x - m) for m in self.means], 1).min(1)


def _within(x: np.ndarray, of: np.ndarray) -> tuple[np.ndarray, LedoitWolf]:
    """Per-source means and the shared within-source covariance (Ledoit-Wolf shrinkage) of exemplars."""
    means = np.stack([x[of == j].mean(0) for j in range(of.max() + 1)])
    return means, LedoitWolf().fit(x - means[of])


class _Constant:
    """The source classifier when the exemplars show one source."""

    def __init__(self, label: str):
        self.classes_ = np.array([label])

    def predict_proba(self, x):
        return np.ones((len(x), 1))


def _kind(evidence: str) -> str:
    return evidence.split(" ", 1)[0].rstrip(":")


def _open(path: Path, where: str):
    """(RGB image, EXIF) of one file; one clear error naming ``where`` if it cannot be read."""
    try:
        with Image.open(path) as im:
            exif = dict(im.getexif())
            return im.convert("RGB"), exif
    except FileNotFoundError:
        raise GovlabError(f"{where}: image not found at {path}") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise GovlabError(f"{where}: cannot read image {path} ({e})") from None


def read_untagged(root: Path) -> list[dict]:
    """The records of ``root/metadata.jsonl``: each needs ``file_name`` and a caption; the governance
    fields are optional, and checked where present."""
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise GovlabError(f"{meta}: not found (tagging reads the captions from an imagefolder's metadata.jsonl)")
    records = []
    for lineno, where, rec in json_lines(meta):  # a byte-order mark and CRLF line ends are accepted
        name = rec.get("file_name")
        if not isinstance(name, str) or not name:
            raise GovlabError(f"{where}: missing required field 'file_name'")
        if Path(name).is_absolute() or ".." in Path(name).parts or name.startswith(("/", "\\")):
            raise GovlabError(f"{where}: file_name {name!r} escapes the dataset folder")
        for fld, typ in (("source_id", str), ("license", str), ("opt_out", bool), ("categories", list)):
            if fld in rec and not isinstance(rec[fld], typ):
                raise GovlabError(f"{where}: field '{fld}' must be {typ.__name__}, got {rec[fld]!r}")
        for c in rec.get("categories", ()):
            if c not in CATEGORIES:
                raise GovlabError(f"{where}: unknown category {c!r} (known: {', '.join(CATEGORIES)})")
        records.append({**rec, "_line": lineno})
    if not records:
        raise GovlabError(f"{meta}: no records")
    missing = [r["_line"] for r in records if not (isinstance(r.get("caption"), str) and r["caption"].strip())]
    if len(missing) == len(records):
        raise GovlabError(f"{meta}: no captions (no record has a non-empty 'caption'; the taxonomy's "
                          f"caption rules need them)")
    if missing:
        raise GovlabError(f"{meta} line {missing[0]}: missing or empty 'caption'")
    return records


def _target(root: Path, out: Path | None) -> Path:
    out = (out or root.parent / f"{root.name}-tagged").resolve()
    if out == root or root in out.parents or out in root.parents:
        raise GovlabError(f"--out {out}: must lie outside the input folder {root} (the input is never edited)")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SUMMARY).is_file())):
        raise GovlabError(f"--out {out}: exists and is not a tagged copy (no {SUMMARY}); refusing to overwrite")
    return out


def tag_folder(src: str | Path, out: str | Path | None = None, *, taxonomy: str | Path | None = None,
               encoder: str | Path | None = None, source_from: str = "auto", progress: bool = True) -> dict:
    """Tag the imagefolder ``src`` into a completed copy ``out`` (default ``SRC-tagged``) with
    ``review.jsonl`` (each value, its evidence and confidence, lowest confidence first) and
    ``tag.json`` (the summary). ``src`` is only read; ``out`` appears whole or not at all."""
    from govlab.tagging.encoders import load_encoder

    start = time.perf_counter()
    root = Path(src).resolve()
    if not root.is_dir():
        raise GovlabError(f"{root}: not a folder")
    check_mode(source_from)
    tax = load_taxonomy(taxonomy)
    target = _target(root, Path(out) if out is not None else None)
    records = read_untagged(root)
    enc = load_encoder(encoder, progress=progress)
    images, exifs = [], []
    for rec in tqdm(records, desc="tag: read", disable=not progress, leave=False):
        path = (root / rec["file_name"]).resolve()
        where = f"{root / 'metadata.jsonl'} line {rec['_line']}"
        if root not in path.parents:
            raise GovlabError(f"{where}: file_name {rec['file_name']!r} escapes the dataset folder")
        im, exif = _open(path, where)
        images.append(im)
        exifs.append(exif)
    tagged, rows, summary = Tagger(tax, enc, source_from=source_from).fit().tag(records, images, exifs)
    summary = {"input": str(root), "out": str(target), "taxonomy": str(tax.path), "taxonomy_digest": tax.digest,
               "encoder": enc.name, "source_from": source_from, **summary,
               "seconds": round(time.perf_counter() - start, 3)}
    _write(root, target, tagged, rows, summary)
    return summary


def _write(root: Path, target: Path, records: list[dict], rows: list[Row], summary: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    old = None
    try:
        shutil.copytree(root, tmp, dirs_exist_ok=True)
        for name in (REVIEW, SUMMARY):  # a tagged folder tagged again: its old review goes
            (tmp / name).unlink(missing_ok=True)
        write_text(tmp / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        buf = io.StringIO()
        for r in rows:
            buf.write(json.dumps(asdict(r)) + "\n")
        write_text(tmp / REVIEW, buf.getvalue())
        write_json(tmp / SUMMARY, summary)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
            os.replace(target, old / "d")
        os.chmod(tmp, 0o777 & ~_UMASK)  # a folder as mkdir makes it, not mkdtemp's owner-only one
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old / "d", target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
