# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""The pure stability rules: observations in, verdict out."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pytest

from airflow_s3sftp.core import stability
from airflow_s3sftp.core.stability import Action, Observation, Policy, State, assess, assess_digest
from airflow_s3sftp.exceptions import ChecksumMismatchError, VerificationError

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def seen(
    at: float, size: int | None = 100, mtime: int | None = 1000, clock: str | None = "proc"
) -> Observation:
    """An observation ``at`` seconds after T0, on the monotonic clock of process ``clock``."""
    return Observation(
        at=T0 + datetime.timedelta(seconds=at), size=size, mtime=mtime, monotonic=at, clock=clock
    )


def policy(**kwargs: object) -> Policy:
    arguments: dict[str, object] = {"target": "sftp://h:22/in/f", "stable_for": 2.0, "checksum": "sha256"}
    arguments.update(kwargs)
    return Policy.build(**arguments)  # type: ignore[arg-type]


def feed(p: Policy, *observations: Observation, state: State | None = None) -> stability.Verdict:
    """Assess observations in turn; return the last verdict."""
    verdict = stability.Verdict(Action.WAIT, state or State(), "start")
    for observation in observations:
        verdict = assess(verdict.state, observation, p)
    return verdict


class TestPolicy:
    def test_expected_checksum_algorithm_wins_and_is_normalised(self) -> None:
        built = policy(checksum="sha256", expected_checksum=" MD5:" + "A" * 32)
        assert (built.algorithm, built.expected_checksum) == ("md5", "md5:" + "a" * 32)

    def test_expected_checksum_turns_hashing_on(self) -> None:
        assert policy(checksum=None, expected_checksum=DIGEST_A).algorithm == "sha256"

    def test_timedelta_and_mtime_resolution(self) -> None:
        built = policy(stable_for=datetime.timedelta(minutes=1))
        assert built.stable_for == 60.0
        assert built.required_span == 60.0 + stability.MTIME_RESOLUTION

    def test_templated_expected_size_is_coerced(self) -> None:
        assert policy(expected_size="1000").expected_size == 1000

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"expected_checksum": "sha256:xyz"}, "expected_checksum for sftp://h:22/in/f"),
            ({"expected_checksum": "deadbeef"}, "not in the form"),
            ({"checksum": "crc32"}, "Unsupported checksum algorithm"),
            ({"stable_for": -1}, "stable_for"),
            ({"min_size": -1}, "min_size"),
            ({"expected_size": 0}, "below min_size"),
            ({"expected_size": "many"}, "must be an integer"),
            (
                {"expected_checksum": DIGEST_A, "expected_checksum_from": "sidecar"},
                "either expected_checksum or expected_checksum_from",
            ),
            ({"checksum": None, "expected_checksum_from": "sidecar"}, "needs a checksum algorithm"),
            ({"expected_checksum_from": "s3"}, "expected_checksum_from for sftp://h:22/in/f must be one of"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            policy(**kwargs)


class TestObservations:
    def test_state_round_trips_through_json_in_utc(self) -> None:
        state = State(since=seen(0), last=seen(5), checksum=DIGEST_A, checksum_poll=2, polls=3)
        data = json.loads(json.dumps(state.to_dict()))
        assert State.from_dict(data) == state
        assert data["since"]["at"] == "2026-01-01T12:00:00+00:00"

    def test_other_timezones_are_converted_to_utc(self) -> None:
        data = seen(0).to_dict() | {"at": "2026-01-01T14:00:00+02:00"}
        assert Observation.from_dict(data).at == T0

    def test_naive_timestamps_are_refused(self) -> None:
        with pytest.raises(ValueError, match="no timezone"):
            Observation.from_dict(seen(0).to_dict() | {"at": "2026-01-01T12:00:00"})

    def test_unknown_state_version_is_refused(self) -> None:
        with pytest.raises(ValueError, match="version"):
            State.from_dict(State().to_dict() | {"version": 99})

    def test_take_stamps_utc_and_this_process(self) -> None:
        first, second = Observation.take(1, 2), Observation.take(1, 2)
        assert first.at.tzinfo == datetime.UTC
        assert first.clock == second.clock is not None
        assert stability.elapsed(first, second) >= 0

    def test_elapsed_uses_monotonic_within_a_process(self) -> None:
        # The wall clock jumped an hour between the two; the monotonic clock says 3 s.
        later = Observation(at=T0 + datetime.timedelta(hours=1), size=1, mtime=1, monotonic=3.0, clock="p")
        assert stability.elapsed(seen(0, clock="p"), later) == 3.0

    def test_elapsed_uses_utc_across_processes_and_never_goes_negative(self) -> None:
        assert stability.elapsed(seen(0, clock="worker-1"), seen(7, clock="triggerer")) == 7.0
        backwards = Observation(at=T0 - datetime.timedelta(seconds=5), size=1, mtime=1)
        assert stability.elapsed(seen(0, clock=None), backwards) == 0.0


class TestAssess:
    def test_missing_file_is_not_yet_and_forgets_the_run(self) -> None:
        verdict = feed(policy(), seen(0), seen(1), seen(2, size=None, mtime=None))
        assert verdict.action is Action.WAIT and verdict.state.since is None
        assert "does not exist" in verdict.reason

    def test_stable_for_plus_mtime_resolution_then_hash(self) -> None:
        p = policy(stable_for=2.0)
        assert feed(p, seen(0), seen(1), seen(2.9)).action is Action.WAIT
        verdict = feed(p, seen(0), seen(1), seen(3.0))
        assert verdict.action is Action.HASH and verdict.algorithm == "sha256"
        assert verdict.state.since == seen(0) and verdict.state.polls == 3

    @pytest.mark.parametrize("change", [{"size": 101}, {"mtime": 1001}])
    def test_any_change_of_size_or_mtime_restarts_the_run(self, change: dict[str, int]) -> None:
        verdict = feed(policy(), seen(0), seen(2), seen(2.5, **change), seen(3.5, **change))
        assert verdict.action is Action.WAIT
        assert verdict.state.since == seen(2.5, **change)

    def test_without_checksum_size_and_mtime_fire(self) -> None:
        verdict = feed(policy(checksum=None), seen(0), seen(3))
        assert verdict.action is Action.FIRE
        result = stability.result("/in/f", verdict)
        assert result == {
            "path": "/in/f",
            "size": 100,
            "mtime": 1000,
            "checksum": None,
            "stable_since": "2026-01-01T12:00:00+00:00",
            "observed_at": "2026-01-01T12:00:03+00:00",
            "stable_seconds": 3.0,
            "polls": 2,
        }

    @pytest.mark.parametrize(
        ("size", "kwargs"),
        [(0, {}), (99, {"min_size": 100}), (99, {"expected_size": 100})],
        ids=["empty", "below-min-size", "below-expected-size"],
    )
    def test_too_small_stays_not_yet(self, size: int, kwargs: dict[str, int]) -> None:
        verdict = feed(policy(**kwargs), seen(0, size=size), seen(60, size=size))
        assert verdict.action is Action.WAIT

    def test_larger_than_expected_fails_once_stable_not_before(self) -> None:
        p = policy(expected_size=99)
        assert feed(p, seen(0), seen(1)).action is Action.WAIT
        with pytest.raises(VerificationError, match=r"sftp://h:22/in/f: size 100 exceeds expected_size 99"):
            feed(p, seen(0), seen(3))

    def test_no_result_before_firing(self) -> None:
        with pytest.raises(ValueError, match="not fire"):
            stability.result("/in/f", feed(policy(), seen(0)))


class TestAssessDigest:
    def test_two_equal_digests_one_poll_apart_fire(self) -> None:
        p = policy()
        first = assess_digest(feed(p, seen(0), seen(3)).state, seen(3.1), DIGEST_A, p)
        assert first.action is Action.WAIT and first.state.checksum == DIGEST_A
        again = assess(first.state, seen(4), p)
        assert again.action is Action.HASH
        fired = assess_digest(again.state, seen(4.1), DIGEST_A, p)
        assert fired.action is Action.FIRE and fired.checksum == DIGEST_A
        assert stability.result("/in/f", fired)["checksum"] == DIGEST_A

    def test_new_content_under_the_same_size_and_mtime_restarts_keeping_the_digest(self) -> None:
        p = policy()
        first = assess_digest(feed(p, seen(0), seen(3)).state, seen(3.1), DIGEST_A, p)
        changed = assess_digest(assess(first.state, seen(4), p).state, seen(4.1), DIGEST_B, p)
        assert changed.action is Action.WAIT
        assert changed.state.since == seen(4.1) and changed.state.checksum == DIGEST_B
        # Not hashed again before a full span; then one equal digest proves it.
        assert assess(changed.state, seen(5), p).action is Action.WAIT
        verdict = assess(changed.state, seen(7.2), p)
        assert verdict.action is Action.HASH
        assert assess_digest(verdict.state, seen(7.3), DIGEST_B, p).action is Action.FIRE

    @pytest.mark.parametrize(
        ("after", "checksum"),
        [
            (seen(3.1, size=200), DIGEST_A),
            (seen(3.1, mtime=1001), DIGEST_A),
            (seen(3.1, size=None, mtime=None), DIGEST_A),
            (seen(3.1), None),
        ],
        ids=["grew", "touched", "deleted", "short-read"],
    )
    def test_change_while_hashing_restarts(self, after: Observation, checksum: str | None) -> None:
        p = policy(expected_checksum=DIGEST_A)
        verdict = assess_digest(feed(p, seen(0), seen(3)).state, after, checksum, p)
        assert verdict.action is Action.WAIT and verdict.state.checksum is None
        assert verdict.state.since == (after if after.exists else None)

    def test_expected_checksum_match_fires_on_the_first_digest(self) -> None:
        p = policy(expected_checksum=DIGEST_A)
        verdict = assess_digest(feed(p, seen(0), seen(3)).state, seen(3.1), DIGEST_A, p)
        assert verdict.action is Action.FIRE

    def test_expected_checksum_mismatch_fails_naming_both(self) -> None:
        p = policy(expected_checksum=DIGEST_A)
        with pytest.raises(ChecksumMismatchError) as err:
            assess_digest(feed(p, seen(0), seen(3)).state, seen(3.1), DIGEST_B, p)
        assert (err.value.expected, err.value.actual) == (DIGEST_A, DIGEST_B)
        assert "sftp://h:22/in/f" in str(err.value)


class TestSidecar:
    """``expected_checksum_from="sidecar"``: the sidecar's digest, once there, acts as ``expected_checksum``."""

    def stable(self, p: Policy) -> stability.Verdict:
        return feed(p, seen(0), seen(3))

    def test_the_sidecar_is_read_only_once_size_and_mtime_are_stable(self) -> None:
        p = policy(expected_checksum_from="sidecar")
        assert feed(p, seen(0), seen(1)).action is Action.WAIT
        verdict = self.stable(p)
        assert verdict.action is Action.READ_SIDECAR and verdict.algorithm == "sha256"

    def test_empty_templated_expected_checksum_does_not_conflict(self) -> None:
        assert policy(expected_checksum="", expected_checksum_from="sidecar").expected_checksum is None

    def test_no_sidecar_is_not_yet_and_keeps_the_run(self) -> None:
        p = policy(expected_checksum_from="sidecar")
        stable = self.stable(p)
        verdict = stability.assess_sidecar(stable.state, None, p)
        assert verdict.action is Action.WAIT and verdict.state == stable.state
        assert "sidecar holds no sha256 digest yet" in verdict.reason
        # Still stable at the next poll: ask for the sidecar again, without a second stable span.
        assert assess(verdict.state, seen(3.5), p).action is Action.READ_SIDECAR

    def test_sidecar_digest_then_matching_content_fires_on_the_first_digest(self) -> None:
        p = policy(expected_checksum_from="sidecar", checksum="SHA256")
        stable = self.stable(p)
        verdict = stability.assess_sidecar(stable.state, "a" * 64, p)
        assert verdict.action is Action.HASH
        assert (verdict.algorithm, verdict.expected_checksum) == ("sha256", DIGEST_A)
        fired = assess_digest(verdict.state, seen(3.1), DIGEST_A, p, verdict.expected_checksum)
        assert fired.action is Action.FIRE and fired.checksum == DIGEST_A
        assert "sidecar" in fired.reason

    def test_sidecar_mismatch_fails_naming_both(self) -> None:
        p = policy(expected_checksum_from="sidecar")
        verdict = stability.assess_sidecar(self.stable(p).state, "a" * 64, p)
        with pytest.raises(ChecksumMismatchError) as err:
            assess_digest(verdict.state, seen(3.1), DIGEST_B, p, verdict.expected_checksum)
        assert (err.value.expected, err.value.actual) == (DIGEST_A, DIGEST_B)
        assert "sftp://h:22/in/f" in str(err.value)

    def test_change_while_hashing_restarts(self) -> None:
        p = policy(expected_checksum_from="sidecar")
        verdict = stability.assess_sidecar(self.stable(p).state, "a" * 64, p)
        restarted = assess_digest(verdict.state, seen(3.1, size=200), DIGEST_B, p, verdict.expected_checksum)
        assert restarted.action is Action.WAIT and restarted.state.since == seen(3.1, size=200)

    def test_the_digest_cannot_skip_the_sidecar(self) -> None:
        """Without the sidecar's digest there is no two-digest fallback: that would fire without it."""
        p = policy(expected_checksum_from="sidecar")
        with pytest.raises(ValueError, match="no expected checksum was read from the sidecar"):
            assess_digest(self.stable(p).state, seen(3.1), DIGEST_A, p)
        with pytest.raises(ValueError, match="takes no expected checksum from a sidecar"):
            stability.assess_sidecar(self.stable(policy()).state, "a" * 64, policy())


def test_same_verdict_after_a_reschedule_or_deferral() -> None:
    """Carrying the state through JSON into another process changes nothing but the clock used."""
    p = policy()
    local = feed(p, seen(0), seen(1))
    carried = State.from_dict(json.loads(json.dumps(local.state.to_dict())))
    later = seen(3.5, clock="another-process")
    assert assess(carried, later, p) == assess(local.state, later, p)
    assert assess(carried, later, p).action is Action.HASH


def test_the_rules_import_nothing_from_airflow() -> None:
    code = "import sys, airflow_s3sftp.core.stability; print(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert output.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.04, "0.0 s"),
        (8.139272103999929, "8.1 s"),
        (42.5, "42 s"),
        (61, "61 s (1 min)"),
        (3725, "3725 s (1 h 2 min)"),
        (7201, "7201 s (2 h)"),
    ],
)
def test_format_seconds_rounds_for_people(seconds: float, text: str) -> None:
    assert stability.format_seconds(seconds) == text


def test_timeout_message_names_path_last_observation_reason_and_wait() -> None:
    at = datetime.datetime(2026, 12, 6, 14, 0, 5, tzinfo=datetime.UTC)
    last = stability.Observation(at=at, size=1234, mtime=int(at.timestamp()) - 5)
    state = stability.State(since=last, last=last, polls=7)

    message = stability.timeout_message(
        "h:22:/in/a.csv", state, "size 1234 has not reached expected_size 2000", 30.26, 30
    )

    assert message == (
        "SFTP file h:22:/in/a.csv was not complete after 30 s, timeout 30 s, 7 polls: last seen 1,234 bytes "
        "with mtime 2026-12-06T14:00:00Z at 2026-12-06T14:00:05Z; not complete because size 1234 has not "
        "reached expected_size 2000"
    )
    assert "never observed" in stability.timeout_message("h:22:/x", stability.State(), None, 0.5, 0.5)
