"""faust-backpressure: rate limiting and backpressure for Faust apps, shared across workers."""

from faust_backpressure import tables as _tables  # noqa: F401  (registers the rocksdict:// store)

__version__ = "0.1.0"
