"""A misspelled ``FAUST_BP_*`` variable is not silently ignored: a warning names the closest
known setting (``FAUST_BP_MAX_CONSUMER_LAGG`` -> ``FAUST_BP_MAX_CONSUMER_LAG``)."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping

__all__ = ["TOOLING_VARIABLES", "UnknownSettingWarning", "warn_unknown_variables"]

#: ``FAUST_BP_*`` variables read by the project's tooling (the local broker), not settings.
TOOLING_VARIABLES = frozenset({"KAFKA_HOME", "KAFKA_VERSION"})


class UnknownSettingWarning(UserWarning):
    """An environment variable with the settings' prefix names no setting."""


def warn_unknown_variables(prefix: str, environ: Mapping[str, str],
                           fields: Iterable[str]) -> None:
    """One warning per ``{prefix}*`` variable that is no setting, naming the closest one."""
    known = {prefix + name.upper() for name in fields}
    known |= {prefix + name for name in TOOLING_VARIABLES}
    for var in sorted(environ):
        if not var.startswith(prefix) or var in known:
            continue
        close = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(sorted(known))}"
        warnings.warn(f"{var} is not a faust-backpressure setting and is ignored{hint}",
                      UnknownSettingWarning, stacklevel=3)
