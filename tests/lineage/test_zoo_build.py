"""Several processes building one zoo share the work (fake training, no models)."""

import threading
import time
from dataclasses import replace

from filelock import FileLock

from govlab.io import write_json
from govlab.lineage import zoo as Z


def fake_training(monkeypatch, recipes: list) -> list[str]:
    """Zoo builds of ``recipes`` that only create each model's directory; returns the list of the
    names trained, in order."""
    trained = []

    def train(r, path):
        path.mkdir(parents=True, exist_ok=True)
        trained.append(r.name)

    monkeypatch.setattr(Z, "recipes", lambda quick=True: recipes)
    monkeypatch.setattr(Z, "_train_scratch", train)
    monkeypatch.setattr(Z, "_fine_tune", lambda r, parent, parent_path, path: train(r, path))
    return trained


def test_zoo_build_passes_over_a_model_another_process_holds(tmp_path, monkeypatch):
    recipes = [Z.Recipe("base_a", "base", {}), Z.Recipe("base_b", "base", {}),
               Z.Recipe("a_ft", "fine-tune", {}, parent="base_a")]
    trained = fake_training(monkeypatch, recipes)
    out = tmp_path / "zoo"
    base_a = out / "pool" / "base_a"
    base_a.mkdir(parents=True)
    other = FileLock(f"{base_a}.lock")  # another process is training base_a
    other.acquire()
    builder = threading.Thread(target=Z.build_zoo, args=(out,), kwargs={"progress": False, "poll_s": 0.02})
    builder.start()
    deadline = time.time() + 20
    while not trained and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert trained == ["base_b"]  # base_a is held, and its fine-tune waits for it
    by_name = {r.name: r for r in recipes}
    write_json(base_a / "recipe.json", Z.recipe_stamp(recipes[0], by_name))  # the other process finishes base_a
    other.release()
    builder.join(20)
    assert not builder.is_alive() and trained == ["base_b", "a_ft"]
    assert Z.Zoo.open(out).get("a_ft").expected == "base_a"


def test_rebuild_redoes_the_fine_tunes_of_a_changed_parent_and_keeps_the_rest(tmp_path, monkeypatch):
    recipes = [Z.Recipe("base_a", "base", {"train": {"seed": 0}}), Z.Recipe("base_b", "base", {}),
               Z.Recipe("a_ft", "fine-tune", {}, parent="base_a"),
               Z.Recipe("a_ft_ft", "fine-tune", {}, parent="a_ft"), Z.Recipe("b_ft", "fine-tune", {}, parent="base_b")]
    trained = fake_training(monkeypatch, recipes)
    Z.build_zoo(tmp_path, progress=False)
    assert sorted(trained) == sorted(r.name for r in recipes)
    trained.clear()
    Z.build_zoo(tmp_path, progress=False)
    assert trained == []  # nothing changed: everything kept
    recipes[0] = replace(recipes[0], config={"train": {"seed": 1}})
    Z.build_zoo(tmp_path, progress=False)
    assert trained == ["base_a", "a_ft", "a_ft_ft"]  # the changed base and its descendants, in order
    trained.clear()
    (tmp_path / "pool" / "base_b" / "model.safetensors").write_bytes(b"weights trained again")
    (tmp_path / "targets" / "b_ft" / "stale.txt").write_text("from the earlier training")
    Z.build_zoo(tmp_path, progress=False)
    assert trained == ["b_ft"]  # its parent's weights changed
    assert not (tmp_path / "targets" / "b_ft" / "stale.txt").exists()  # redone in an emptied directory
    trained.clear()
    monkeypatch.setattr(Z, "WORLD_VERSION", "another world")
    Z.build_zoo(tmp_path, progress=False)
    assert sorted(trained) == sorted(r.name for r in recipes)


def test_build_once_without_waiting_passes_over_an_entry_another_process_holds(tmp_path):
    from govlab.data.cache import build_once

    entry, built = tmp_path / "entry", []

    def build():
        entry.write_text("x")
        built.append(1)

    other = FileLock(f"{entry}.lock")
    other.acquire()
    assert build_once(entry, entry.is_file, build, wait=False) is False and not built
    other.release()
    assert build_once(entry, entry.is_file, build, wait=False) is True and built == [1]
    assert build_once(entry, entry.is_file, build) is True and built == [1]  # ready: not built again
