"""One context per app (faust_seam/context.py): every part of an app's state hangs on it, and
options given again must agree with the first ones (a conflict names the option)."""

from __future__ import annotations

import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.app.dashboard import history_of
from faust_backpressure.app.registry import installed
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.errors import BackpressureError, ConflictingOption
from faust_backpressure.faust_seam import (
    context_of,
    find_context,
    install,
    is_control_topic,
    mark_control_topic,
    register_batch_tap,
)
from faust_backpressure.faust_seam.batches import batch_taps
from faust_backpressure.tables import DistributedRateLimiterFactory
from faust_backpressure.tables.service import find_channel, limiter_channel

create = DistributedRateLimiterFactory.create_distributed


def _app(name: str) -> faust.App:
    return faust.App(f"ctx-{name}", broker="kafka://127.0.0.1:1", store="memory://")


def test_one_context_per_app_holds_every_part() -> None:
    app, other = _app("parts"), _app("parts-other")
    assert find_context(app) is None and find_channel(app) is None
    bp = Backpressure(app, BackpressureSettings(max_retries=5))
    context = context_of(app)
    assert context is bp.context is context_of(app) and context is not context_of(other)
    assert context.settings is bp.settings and context.seam_installed
    assert installed(app) is bp and history_of(app) is history_of(app)
    limiter = create(app, "api", 10, 10)
    assert find_channel(app) is limiter_channel(app) and find_channel(other) is None
    assert find_channel(app).limiters == {"api": limiter}  # type: ignore[union-attr]
    mark_control_topic(app, "t")
    assert is_control_topic(app, "t") and not is_control_topic(other, "t")
    tap = object()
    register_batch_tap(app, "src", tap)  # type: ignore[arg-type]
    assert batch_taps(app) == {"src": tap} and batch_taps(other) == {}
    with pytest.raises(LookupError):
        installed(other)


def test_anything_but_an_app_has_no_context() -> None:
    assert find_context(object()) is None and find_channel(object()) is None
    assert batch_taps(object()) == {}  # type: ignore[arg-type]


def test_install_twice_patches_once() -> None:
    app = _app("install")
    install(app)
    consumer = app.transport.Consumer
    install(app)
    assert app.transport.Consumer is consumer and context_of(app).seam_installed


def test_without_backpressure_the_environment_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app("env")
    monkeypatch.setenv("FAUST_BP_MAX_RETRIES", "7")
    assert context_of(app).bound_settings is None
    assert context_of(app).settings.max_retries == 7


def test_other_settings_bound_twice_raise_naming_them() -> None:
    app = _app("settings")
    Backpressure(app, BackpressureSettings(max_retries=5, secret="one"))
    Backpressure(app, BackpressureSettings(max_retries=5, secret="one"))  # the same: fine
    with pytest.raises(ConflictingOption, match=r"max_retries \(5 then 6\), secret$") as info:
        Backpressure(app, BackpressureSettings(max_retries=6, secret="two"))
    assert info.value.options == ("max_retries", "secret")
    assert "one" not in str(info.value) and "two" not in str(info.value)
    assert isinstance(info.value, BackpressureError) and isinstance(info.value, ValueError)
    assert context_of(app).settings.max_retries == 5  # the first ones stay


@pytest.mark.parametrize(("option", "first", "again"), [
    ("partitions", 4, 8), ("secret", b"one", b"two"), ("max_clock_skew", 3.0, 5.0)])
def test_other_channel_options_raise_naming_them(option: str, first: object,
                                                 again: object) -> None:
    app = _app(f"channel-{option}")
    create(app, "a", 10, 10, **{option: first})
    create(app, "b", 10, 10, **{option: first})  # the same: fine
    create(app, "c", 10, 10)  # not given: the channel's
    with pytest.raises(ConflictingOption, match=rf"another {option}\b") as info:
        create(app, "d", 10, 10, **{option: again})
    assert info.value.options == (option,)
    assert "two" not in str(info.value)


def test_a_channel_option_given_later_must_match_the_settings_one() -> None:
    app = _app("channel-later")
    Backpressure(app, BackpressureSettings(secret="s3cret", max_clock_skew=3.0))
    create(app, "a", 10, 10)
    create(app, "b", 10, 10, secret=b"s3cret", max_clock_skew=3.0)
    with pytest.raises(ConflictingOption, match="another secret"):
        create(app, "c", 10, 10, secret=b"mine")


def test_a_channel_declared_first_reads_the_settings_bound_later_without_a_second_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAUST_BP_SECRET", "from-env")
    app = _app("channel-first")
    create(app, "a", 10, 10)
    channel = limiter_channel(app)
    assert channel.options.secret == b"from-env"
    Backpressure(app, BackpressureSettings(secret="s3cret", max_clock_skew=3.0))
    assert channel.options.settings is context_of(app).settings
    assert (channel.options.secret, channel.options.max_clock_skew) == (b"s3cret", 3.0)


@pytest.mark.parametrize(("option", "given", "setting"), [
    ("secret", {"secret": b"mine"}, {"secret": "s3cret"}),
    ("max_clock_skew", {"max_clock_skew": 3.0}, {"max_clock_skew": 5.0}),
    ("internal_replication_factor", {}, {"internal_replication_factor": 3})])
def test_settings_bound_after_the_channel_must_agree_with_it(
        option: str, given: dict[str, object], setting: dict[str, object]) -> None:
    app = _app(f"settings-after-{option}")
    create(app, "a", 10, 10, **given)
    with pytest.raises(ConflictingOption, match=rf"declared before these settings, with "
                       rf"another {option}\b") as info:
        Backpressure(app, BackpressureSettings(**setting))  # type: ignore[arg-type]
    assert info.value.options == (option,) and "s3cret" not in str(info.value)
    assert context_of(app).bound_settings is None  # nothing was bound
    # a setting left at its default asks for nothing: the channel's own option stands
    other = _app(f"settings-after-default-{option}")
    create(other, "a", 10, 10, **given)
    Backpressure(other, BackpressureSettings())
    channel = limiter_channel(other)
    assert all(getattr(channel.options, name) == value for name, value in given.items())
    assert channel.request_topic.replicas is None


def test_a_limiter_id_declared_again_with_other_options_raises() -> None:
    app = _app("limiter-id")
    bp = Backpressure(app, BackpressureSettings())
    limiter = create(app, "api", 10, 20)
    assert create(app, "api", 10, 20) is limiter
    assert bp.limiter("api") is limiter
    assert bp.limiter("api", tokens_per_second=10, burst_capacity=20) is limiter
    assert bp.limiter("api", tokens_per_second=10) is limiter  # burst not given
    with pytest.raises(ConflictingOption, match="other tokens_per_second, burst_capacity"):
        create(app, "api", 11, 21)
    with pytest.raises(ConflictingOption, match="other lease_ttl"):
        create(app, "api", 10, 20, lease_ttl=5.0)
    with pytest.raises(ConflictingOption, match="other burst_capacity") as info:
        bp.limiter("api", tokens_per_second=10, burst_capacity=30)
    assert info.value.options == ("burst_capacity",)
