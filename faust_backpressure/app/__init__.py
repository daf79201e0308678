"""The installer: ``Backpressure(app)`` and the ``faust ... backpressure`` commands."""

from faust_backpressure.app.installer import Backpressure
from faust_backpressure.app.registry import installed

__all__ = ["Backpressure", "installed"]
