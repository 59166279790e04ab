"""The streaming plan's clash index: the same refusals as check_plan, one object at a time, in 8-byte digests."""

from __future__ import annotations

import pytest

from airflow_s3sftp.core.paths import DigestSet, PlanIndex, check_plan

RULES = {"sidecar_suffix": ".sha256", "done_marker": ".done", "manifest": True}


def streamed(plan: list[tuple[str, str]], **rules: object) -> None:
    index = PlanIndex(**{**RULES, **rules})  # type: ignore[arg-type]
    for source, path in plan:
        index.add(source, path)


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        (
            [("a", "/o/x"), ("b", "/o/x")],
            r"'a' and 'b' clash: '/o/x' would be both the file of 'a' and the file of 'b'",
        ),
        (
            [("a", "/o/x"), ("b", "/o/x.sha256")],
            r"'a' and 'b' clash: .* the checksum sidecar of 'a' and the file of 'b'",
        ),
        (
            [("a", "/o/x.sha256"), ("b", "/o/x")],
            r"'a' and 'b' clash: .* the file of 'a' and the checksum sidecar of 'b'",
        ),
        (
            [("a", "/o/x"), ("b", "/o/x.done")],
            r"'a' and 'b' clash: .* the done marker of 'a' and the file of 'b'",
        ),
        (
            [("a", "/o/x"), ("b", "/o/x.manifest")],
            r"'a' and 'b' clash: .* the range manifest of 'a' and the file of 'b'",
        ),
        (
            [("a", "/o/x"), ("b", "/o/x/y")],
            r"'a' and 'b' clash: '/o/x' would be both the file of 'a' and a directory holding 'b'",
        ),
        # The index keeps digests only: the earlier object of a directory it needs is not named.
        (
            [("a", "/o/x/y"), ("b", "/o/x")],
            r"'b' and an earlier object clash: '/o/x' would be both the file of 'b' and a directory",
        ),
        (
            [("a", "/o/x"), ("b", "/o/x.done/z")],
            r"'a' and 'b' clash: '/o/x.done' would be both the done marker of 'a' and a directory holding 'b'",
        ),
        ([("a", "/o/.x.0123456789ab.s3sftp-part")], r"reserved for airflow-s3sftp's temp files"),
        ([("a", "/o/" + "n" * 256)], r"is too long"),
        ([("a", "/o/x"), ("b", "/o/y"), ("c", "/o/z/x"), ("d", "/o/x.csv")], None),
    ],
)
def test_the_index_refuses_what_check_plan_refuses(plan, match):
    if match is None:
        check_plan(plan, **RULES)  # type: ignore[arg-type]
        streamed(plan)
        return
    with pytest.raises(ValueError, match=r"clash|reserved|too long"):
        check_plan(plan, **RULES)  # type: ignore[arg-type]
    first = {}
    for source, path in plan:
        first.setdefault(path, source)
    index = PlanIndex(**RULES, source_of=first.__getitem__)  # type: ignore[arg-type]
    for source, path in plan[:-1]:
        index.add(source, path)
    with pytest.raises(ValueError, match=match):
        index.add(*plan[-1])


def test_a_sidecar_suffix_equal_to_the_done_marker_clashes_within_one_object():
    with pytest.raises(
        ValueError, match=r"'/o/x\.sha256' would be both the checksum sidecar and the done marker"
    ):
        streamed([("a", "/o/x")], done_marker=".sha256")


def test_the_index_takes_a_few_dozen_bytes_per_object():
    index = PlanIndex(**RULES)  # type: ignore[arg-type]
    count = 100_000
    for i in range(count):
        index.add(f"s3://b/px/{i % 100}/{i}.csv", f"/out/{i % 100}/{i}.csv")
    assert index.nbytes / count <= 48, index.nbytes / count
    with pytest.raises(ValueError, match="clash"):
        index.add("s3://b/px/7/7.csv", "/out/7/7.csv")


def test_digest_set_grows_and_answers_membership():
    digests = DigestSet()
    words = [f"w{i}" for i in range(20_000)]
    assert all(digests.add(word) for word in words)
    assert not digests.add("w7"), "already there"
    assert len(digests) == 20_000
    assert all(word in digests for word in words)
    assert sum(f"x{i}" in digests for i in range(20_000)) == 0
    assert digests.nbytes <= 4 * 8 * len(digests)
