"""Plausible wrong submissions must lose points in the right hidden tests, for every lesson: one runner.

Each lesson's table is ``graders/lesson_NN/mutants.toml``; all the gradings of one lesson go
through one ``graders.engine.server.grade_many`` call per ``-k`` expression (pytest, torch and
transformers imported once). Select a lesson with ``-k lesson_03``. The format:

    file = "attention.py"             the file edits apply to (in solutions_private/lesson_NN/)
    bundles = [["a", "b"], ...]       optional: mutants graded together, in one submission
    ungrouped = ["GPU:"]              optional: tests the group check leaves out
    [groups]                          optional: hidden tests by the code they exercise (name prefixes);
    name = ["prefix", ...]            in a bundle, a test of a group no mutant touches must keep its points

    [[mutant]]
    name = "no-scaling"
    edits = [["old", "new"], ...]     substitutions on the reference: old exactly once ([old, new, N]: N times)
    append = "..."                    optional: text added at the end of the file
    file = "..."                      optional: another file of the lesson
    submission = "tests/submissions/lesson_03_loop"   instead of edits: a folder graded as it is
    group = "cross_entropy"           its group, with [groups]
    k = "not training_speed"          optional pytest -k: grade only these hidden tests
    fail = ["name prefix", ...]       each must match a test that lost points
    pass = ["name prefix", ...]       each must match a test, and none of those may lose points
    exact = true                      nothing but `fail` may lose points
    output = "..."                    every test that lost points says this

A test name spec is a prefix, "PREFIX [param]" (ending in "]") for one parametrised case, or "re:REGEX"
(matched at the start of the name).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from graders.engine import lessons
from graders.engine.server import grade_many
from tests.conftest import REPO, SPEED_LESSONS, failed_tests, make_submission

TABLE_KEYS = {"file", "bundles", "groups", "ungrouped", "mutant"}
MUTANT_KEYS = {"name", "edits", "append", "file", "submission", "group", "k", "fail", "pass", "exact", "output"}


@dataclass(frozen=True)
class Grading:
    """One submission to grade: one mutant, or a bundle of mutants of different groups."""

    lesson: str
    mutants: tuple[dict, ...]
    table: dict = field(compare=False, hash=False)

    @property
    def name(self) -> str:
        return "+".join(m["name"] for m in self.mutants)

    @property
    def keyword(self) -> str | None:
        return self.mutants[0].get("k")

    def build(self, root: Path) -> Path:
        """The submission folder: the reference's files with every mutant's edits, or the named folder."""
        if self.mutants[0].get("submission"):
            return REPO / self.mutants[0]["submission"]
        reference = REPO / "solutions_private" / f"lesson_{self.lesson}"
        lesson = lessons.load(self.lesson)
        files = {f"{stem}.py": (reference / f"{stem}.py").read_text() for stem in lesson.sandbox_modules}
        for mutant in self.mutants:
            name = mutant.get("file", self.table["file"])
            files[name] = mutate(files[name], mutant) + mutant.get("append", "")
        return make_submission(root, self.lesson, files)


def mutate(source: str, mutant: dict) -> str:
    """``source`` with the mutant's edits; each target must occur exactly as often as declared."""
    for edit in mutant["edits"]:
        old, new, count = (*edit, 1) if len(edit) == 2 else edit
        found = source.count(old)
        assert found == count, (
            f"{mutant['name']}: target {old[:60]!r} occurs {found} time(s), expected {count}: the reference changed, update the mutant"
        )
        source = source.replace(old, new)
    return source


def matches(name: str, spec: str) -> bool:
    """A prefix, "PREFIX [param]" (one parametrised case) or "re:REGEX" (matched at the start)."""
    if spec.startswith("re:"):
        return re.match(spec[3:], name) is not None
    if spec.endswith("]") and " [" in spec:
        prefix, _, param = spec.rpartition(" [")
        return name.startswith(prefix) and name.endswith(f"[{param}")
    return name.startswith(spec)


def load_table(nn: str) -> tuple[dict, list[Grading]]:
    path = REPO / "graders" / f"lesson_{nn}" / "mutants.toml"
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    assert set(table) <= TABLE_KEYS, f"{path}: unknown keys {sorted(set(table) - TABLE_KEYS)}"
    mutants = {}
    for m in table.get("mutant", []):
        assert set(m) <= MUTANT_KEYS, f"{path}: mutant {m.get('name')}: unknown keys {sorted(set(m) - MUTANT_KEYS)}"
        assert m.get("name") and m["name"] not in mutants, f"{path}: every mutant needs a unique name ({m.get('name')!r})"
        assert bool(m.get("edits")) != bool(m.get("submission")), f"{path}: {m['name']}: give `edits` or `submission`"
        assert m.get("fail"), f"{path}: {m['name']}: name the tests that must lose points (`fail`)"
        mutants[m["name"]] = m
    bundles = [tuple(b) for b in table.get("bundles", [])]
    listed = [name for b in bundles for name in b]
    assert len(listed) == len(set(listed)) and set(listed) <= set(mutants), f"{path}: each bundled mutant once, and only known ones"
    groups = table.get("groups", {})
    for bundle in bundles:
        owned = [mutants[name].get("group") for name in bundle]
        assert None not in owned and len(set(owned)) == len(owned) and set(owned) <= set(groups), (
            f"{path}: bundle {bundle}: one mutant per group, each group listed in [groups]"
        )
        assert len({mutants[name].get("k") for name in bundle}) == 1, f"{path}: bundle {bundle}: one `k` for all"
    alone = [(m,) for name, m in mutants.items() if name not in listed]
    gradings = [Grading(nn, tuple(mutants[name] for name in b), table) for b in bundles]
    return table, gradings + [Grading(nn, ms, table) for ms in alone]


LESSONS = [nn for nn in lessons.available() if (REPO / "graders" / f"lesson_{nn}" / "mutants.toml").exists()]
CASES = [g for nn in LESSONS for g in load_table(nn)[1]]


@pytest.mark.parametrize("nn", LESSONS, ids=[f"lesson_{nn}" for nn in LESSONS])
def test_mutant_table_applies_to_the_reference(nn: str, tmp_path: Path):
    """Every target is in the reference as often as declared; every folder submission exists."""
    _, gradings = load_table(nn)
    assert gradings, f"lesson {nn}: mutants.toml lists no mutant"
    for i, grading in enumerate(gradings):
        folder = grading.build(tmp_path / str(i))
        assert (folder / f"lesson_{nn}").is_dir() or folder.name == f"lesson_{nn}", f"{grading.name}: no lesson_{nn}/ in {folder}"


@pytest.fixture(scope="module")
def graded(request: pytest.FixtureRequest, grading_server, tmp_path_factory: pytest.TempPathFactory):
    """graded(case) -> results; the first call grades every selected case of that lesson in one go."""
    done: dict[tuple[str, str], dict] = {}

    def results(case: Grading) -> dict:
        if (case.lesson, case.name) not in done:
            selected = [i.callspec.params.get("case") for i in request.session.items if hasattr(i, "callspec")]
            todo = [c for c in selected if isinstance(c, Grading) and c.lesson == case.lesson] or [case]
            root = tmp_path_factory.mktemp(f"mutants-{case.lesson}")
            for keyword in dict.fromkeys(c.keyword for c in todo):
                batch = [c for c in todo if c.keyword == keyword]
                items = [(c.build(root / f"sub-{i}"), root / f"out-{c.name}") for i, c in enumerate(batch)]
                graded = grade_many(lessons.load(case.lesson), items, server=grading_server, keyword=keyword)
                done.update({(c.lesson, c.name): res for c, res in zip(batch, graded, strict=True)})
        return done[(case.lesson, case.name)]

    return results


def _param(case: Grading):
    """A grading that runs a speed test (a lesson with one, no -k) is ``serial``: never next to another grading."""
    serial = case.lesson in SPEED_LESSONS and case.keyword is None
    return pytest.param(case, id=f"lesson_{case.lesson}/{case.name}", marks=[pytest.mark.serial] if serial else [])


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_mutant_loses_points_in_the_right_tests(graded, case: Grading):
    res = graded(case)
    lost = failed_tests(res)
    failed = {t["name"]: t["output"] for t in res["tests"] if t["name"] in lost}
    names = [t["name"] for t in res["tests"]]
    expected = [spec for m in case.mutants for spec in m["fail"]]
    assert res["score"] < res["max_score"], f"{case.name}: full marks ({res['score']:g}/{res['max_score']:g})"
    for m in case.mutants:
        for spec in m["fail"]:
            assert any(matches(f, spec) for f in failed), f"{m['name']}: expected {spec!r} to fail; failed: {sorted(failed)}"
        for spec in m.get("pass", []):
            assert any(matches(n, spec) for n in names), f"{m['name']}: no hidden test matches {spec!r}"
            wrong = [f for f in failed if matches(f, spec) and not any(matches(f, e) for e in expected)]
            assert not wrong, f"{m['name']}: expected {spec!r} to pass; failed: {wrong}"
        if m.get("output"):
            assert all(m["output"] in out for out in failed.values()), f"{m['name']}: every failure should say {m['output']!r}: {failed}"
    if any(m.get("exact") for m in case.mutants):
        unexpected = sorted(f for f in failed if not any(matches(f, e) for e in expected))
        assert not unexpected, f"{case.name}: tests that should have passed failed: {unexpected}"
    groups = case.table.get("groups", {})
    if groups and all(m.get("group") for m in case.mutants):
        touched = {m["group"] for m in case.mutants}
        for name in names:
            if any(name.startswith(p) for p in case.table.get("ungrouped", [])):
                continue
            owners = [g for g, prefixes in groups.items() if any(name.startswith(p) for p in prefixes)]
            assert len(owners) == 1, f"hidden test {name!r} belongs to groups {owners}: update [groups] in mutants.toml"
            if owners[0] in touched or any(matches(name, e) for e in expected):
                continue
            assert name not in failed, f"{name!r} failed, but no mutant in {case.name} touches {owners[0]}: {failed[name]}"
    print(f"{case.name}: {res['score']:g}/{res['max_score']:g} (-k {case.keyword!r}); failed: {sorted(failed)}")
